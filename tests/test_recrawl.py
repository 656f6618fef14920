"""Conditional re-crawls against a real server that keeps ETag/Last-Modified and answers 304:
what is sent, what comes back, what is stored, proven by the server's own records."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import threading
from dataclasses import dataclass, field

import pytest

from conftest import LocalSite, run_crawl
from imgcrawl.demo import make_image

IMAGES = 3
EXPIRED = {"IMAGES_EXPIRES": 0, "IMGCRAWL_WORKER_POOL": "thread"}
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


@dataclass
class Served:
    body: bytes
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class ConditionalSite:
    """A gallery page of IMAGES images, each answered as a server with validators would:
    304 when the request's If-None-Match / If-Modified-Since match, else the image. It
    records each image request's conditions and the image bytes it sent."""

    images: dict[str, Served]
    bad_304: str | None = None  # "always" (even unconditionally) or "with-body"
    asked: dict[str, list[dict]] = field(default_factory=dict)
    sent: int = 0  # image body bytes

    def __post_init__(self):
        self.lock = threading.Lock()
        imgs = "".join(f'<img src="{path}" alt="{path}">' for path in self.images)
        self.site = LocalSite({"/gallery/": ("text/html", f"<html><body>{imgs}</body></html>".encode())},
                              handlers=dict.fromkeys(self.images, self.serve)).start()

    def serve(self, h) -> None:
        image = self.images[h.path]
        conditions = {k: h.headers[k] for k in ("If-None-Match", "If-Modified-Since") if h.headers[k]}
        with self.lock:
            self.asked.setdefault(h.path, []).append(conditions)
        unchanged = (image.etag and conditions.get("If-None-Match") == image.etag) or (
            image.last_modified and "If-None-Match" not in conditions
            and conditions.get("If-Modified-Since") == image.last_modified)
        if self.bad_304 == "always" or (unchanged and self.bad_304 == "with-body"):
            # Head and body in one write, as a server sends them.
            body = b"stale" if self.bad_304 == "with-body" else b""
            h.wfile.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        h.send_response(304 if unchanged else 200)
        for name, value in (("ETag", image.etag), ("Last-Modified", image.last_modified)):
            if value:
                h.send_header(name, value)
        if unchanged:
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(image.body)))
        h.end_headers()
        h.wfile.write(image.body)
        with self.lock:
            self.sent += len(image.body)

    def crawl(self, tmp_path, **settings):
        return run_crawl(tmp_path, "-a", f"url={self.site.url('/gallery/')}", store=tmp_path / "store",
                         settings={"IMGCRAWL_WORKER_POOL": "thread", **settings})

    def url(self, path: str) -> str:
        return self.site.url(path)


def photos(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [make_image(rng, "jpg", f"photo {seed}-{n}") for n in range(IMAGES)]


@pytest.fixture
def make_site():
    made = []

    def make(images: dict[str, Served], **kwargs) -> ConditionalSite:
        made.append(ConditionalSite(images, **kwargs))
        return made[-1]

    yield make
    for site in made:
        site.site.stop()


def lines_by_url(result) -> dict[str, list[dict]]:
    lines: dict[str, list[dict]] = {}
    for line in result.manifest():
        lines.setdefault(line["url"], []).append(line)
    return lines


def index_rows(store) -> dict[str, tuple]:
    with sqlite3.connect(store / ".imgcrawl" / "index.sqlite") as db:
        return {url: (etag, last_modified) for url, etag, last_modified in
                db.execute("SELECT url, etag, last_modified FROM images")}


def stat(log: str, name: str) -> int | None:
    marker = f"'{name}': "
    if marker not in log:
        return None
    return int(log.split(marker, 1)[1].split(",", 1)[0].split("}", 1)[0])


def test_etag_304_downloads_nothing_and_says_uptodate(make_site, tmp_path):
    bodies = photos(1)
    site = make_site({f"/img/{n}.jpg": Served(body, etag=f'"v1-{n}"', last_modified=LAST_MODIFIED)
                      for n, body in enumerate(bodies)})
    first = site.crawl(tmp_path)
    assert first.returncode == 0, first.log[-3000:]
    assert site.sent == sum(map(len, bodies))
    assert index_rows(first.store) == {site.url(f"/img/{n}.jpg"): (f'"v1-{n}"', LAST_MODIFIED) for n in range(IMAGES)}
    stored = {p: p.read_bytes() for p in first.store.rglob("*.jpg")}

    again = site.crawl(tmp_path, **EXPIRED)
    assert again.returncode == 0, again.log[-3000:]
    assert site.sent == sum(map(len, bodies))  # no image body sent a second time
    for n in range(IMAGES):
        path = f"/img/{n}.jpg"
        assert site.asked[path] == [{}, {"If-None-Match": f'"v1-{n}"', "If-Modified-Since": LAST_MODIFIED}]
        last = lines_by_url(again)[site.url(path)][-1]
        assert last["status"] == "uptodate", last
        assert (again.store / last["path"]).read_bytes() == bodies[n]
    assert {p: p.read_bytes() for p in again.store.rglob("*.jpg")} == stored  # files untouched
    assert stat(again.log, "imgcrawl/not_modified") == IMAGES
    assert stat(again.log, "imgcrawl/not_modified_bytes") == sum(map(len, bodies))
    assert "Traceback" not in again.log and " ERROR: " not in again.log


def test_last_modified_only_asks_if_modified_since(make_site, tmp_path):
    bodies = photos(2)
    site = make_site({f"/img/{n}.jpg": Served(body, last_modified=LAST_MODIFIED) for n, body in enumerate(bodies)})
    assert site.crawl(tmp_path).returncode == 0
    again = site.crawl(tmp_path, **EXPIRED)
    assert again.returncode == 0, again.log[-3000:]
    for n in range(IMAGES):
        assert site.asked[f"/img/{n}.jpg"][-1] == {"If-Modified-Since": LAST_MODIFIED}
        assert lines_by_url(again)[site.url(f"/img/{n}.jpg")][-1]["status"] == "uptodate"
    assert site.sent == sum(map(len, bodies))
    assert stat(again.log, "imgcrawl/not_modified") == IMAGES


def test_a_changed_image_is_stored_again_with_its_thumbnails(make_site, tmp_path):
    old, new = photos(3)[0], photos(4)[0]
    site = make_site({"/img/0.jpg": Served(old, etag='"old"'), "/img/1.jpg": Served(photos(5)[0], etag='"same"')})
    first = site.crawl(tmp_path)
    assert first.returncode == 0, first.log[-3000:]
    before = lines_by_url(first)[site.url("/img/0.jpg")][-1]
    old_thumb = (first.store / before["thumbs"]["small"]).read_bytes()

    site.images["/img/0.jpg"] = Served(new, etag='"new"')
    again = site.crawl(tmp_path, **EXPIRED)
    assert again.returncode == 0, again.log[-3000:]
    assert site.asked["/img/0.jpg"][-1] == {"If-None-Match": '"old"'}
    line = lines_by_url(again)[site.url("/img/0.jpg")][-1]
    assert line["status"] == "downloaded" and line["sha256"] == hashlib.sha256(new).hexdigest()
    assert (again.store / line["path"]).read_bytes() == new
    new_thumb = (again.store / line["thumbs"]["small"]).read_bytes()
    assert new_thumb != old_thumb
    assert lines_by_url(again)[site.url("/img/1.jpg")][-1]["status"] == "uptodate"
    assert index_rows(again.store)[site.url("/img/0.jpg")] == ('"new"', None)
    # The old bytes are no longer stored anywhere: a copy of them found later is stored as
    # itself, not pointed at the file that now holds the new bytes.
    site.images["/img/copy.jpg"] = Served(old)
    site.site.files["/gallery/"] = ("text/html", b'<img src="/img/0.jpg"><img src="/img/copy.jpg">')
    site.site.handlers["/img/copy.jpg"] = site.serve
    third = site.crawl(tmp_path)
    copy = lines_by_url(third)[site.url("/img/copy.jpg")][-1]
    assert (third.store / copy["path"]).read_bytes() == old
    assert (third.store / line["path"]).read_bytes() == new


def test_no_validators_downloads_again_as_before(make_site, tmp_path):
    bodies = photos(6)
    site = make_site({f"/img/{n}.jpg": Served(body) for n, body in enumerate(bodies)})
    assert site.crawl(tmp_path).returncode == 0
    again = site.crawl(tmp_path, **EXPIRED)
    assert again.returncode == 0, again.log[-3000:]
    assert all(asked == [{}, {}] for asked in site.asked.values()), site.asked
    assert site.sent == 2 * sum(map(len, bodies))
    assert {lines[-1]["status"] for lines in lines_by_url(again).values()} == {"downloaded"}
    assert stat(again.log, "imgcrawl/not_modified") is None


def test_a_304_to_an_unconditional_request_fails_with_a_reason(make_site, tmp_path):
    site = make_site({"/img/0.jpg": Served(photos(7)[0], etag='"x"')}, bad_304="always")
    result = site.crawl(tmp_path)
    assert result.returncode == 0, result.log[-3000:]
    line = lines_by_url(result)[site.url("/img/0.jpg")][-1]
    assert line["status"] == "failed" and line["reason"] == "bad-304", line
    warned = [x for x in result.log.splitlines() if "WARNING" in x and "/img/0.jpg" in x]
    assert len(warned) == 1 and "not conditional" in warned[0], warned
    assert stat(result.log, "imgcrawl/failed/bad-304") == 1
    assert not (result.store / "full").exists() or not any((result.store / "full").iterdir())


def test_a_304_with_a_body_fails_with_a_reason_and_loses_nothing_else(make_site, tmp_path):
    bodies = photos(8)
    site = make_site({f"/img/{n}.jpg": Served(body, etag=f'"{n}"') for n, body in enumerate(bodies)})
    first = site.crawl(tmp_path)
    assert first.returncode == 0
    stored = {url: lines[-1]["path"] for url, lines in lines_by_url(first).items()}
    site.bad_304 = "with-body"
    site.images["/img/2.jpg"] = Served(photos(9)[0], etag='"changed"')  # a 200: still stored
    again = site.crawl(tmp_path, **EXPIRED)
    assert again.returncode == 0, again.log[-3000:]
    lines = lines_by_url(again)
    for n in (0, 1):
        line = lines[site.url(f"/img/{n}.jpg")][-1]
        assert line["status"] == "failed" and line["reason"] == "bad-304", line
    changed = lines[site.url("/img/2.jpg")][-1]
    assert changed["status"] == "downloaded"
    assert (again.store / changed["path"]).read_bytes() == site.images["/img/2.jpg"].body
    assert stat(again.log, "imgcrawl/failed/bad-304") == 2
    assert "Traceback" not in again.log
    # What was stored before is still there.
    for n in (0, 1):
        assert (again.store / stored[site.url(f"/img/{n}.jpg")]).read_bytes() == bodies[n]


def test_only_bounded_well_formed_validators_are_kept():
    from imgcrawl import conditional

    assert conditional.validators({b"ETag": b'W/"abc"', b"Last-Modified": LAST_MODIFIED.encode()}) == {
        "etag": 'W/"abc"', "last_modified": LAST_MODIFIED}
    assert conditional.validators({b"ETag": b'"' + b"a" * 2000 + b'"'}) == {}  # oversized
    assert conditional.validators({b"ETag": b'"a\x01b"', b"Last-Modified": b"yesterday"}) == {}
    assert conditional.validators({}) == {}
    assert conditional.request_headers({"etag": '"e"'}) == {"If-None-Match": '"e"'}
