"""IMGCRAWL_FILE_NAME: hostile field values become safe names, collisions are told apart the
same way on every crawl, and dedup and "already stored" keep working; checked on the files."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import PurePosixPath

import pytest

from conftest import LocalSite, run_crawl
from imgcrawl import naming
from imgcrawl.demo import make_image

GALLERY_DL_STYLE = "{host}/{page_title}/{index:03}-{name}.{ext}"
HOSTILE = [
    "..", "../../etc/passwd", "/abs/path", "a\x00b", "CON", "con.txt", "nul", "COM1", "LPT9.log", "CONIN$",
    "x" * 300, "\u00e9" * 200, "name.", "name ", ".hidden", ".", "a\\b\\..\\c", 'a<b>c:d"e|f?g*h',
    "photo\u202egpj.exe", "\n\t\r", "", "   ", "COM\u00b9", "a/./b//c",
]
UNSAFE = set('<>:"|?*\\\x00') | {chr(c) for c in range(32)}


def assert_safe(path: str) -> None:
    """A relative path any filesystem takes, that stays where it is put."""
    assert not PurePosixPath(path).is_absolute(), path
    parts = path.split("/")
    assert len(parts) <= naming.MAX_DEPTH + 1, path
    for part in parts:
        assert part not in ("", ".", "..") and not part.startswith("."), (path, part)
        assert not set(part) & UNSAFE, (path, part)
        assert len(part.encode()) <= naming.NAME_MAX, (path, len(part.encode()))
        assert part == part.strip() and not part.endswith("."), (path, part)
        assert part.split(".")[0].rstrip().upper() not in naming.RESERVED, (path, part)


@pytest.mark.parametrize("value", HOSTILE)
def test_every_field_made_safe(value):
    fields = {**dict.fromkeys(naming.FIELDS, value), "index": 7, "width": 1, "height": 2, "ext": "jpg"}
    templates = [GALLERY_DL_STYLE, "{page_path}/{album}/{alt}-{name}", "../{name}/../../{date}.{ext}",
                 "/{image_host}\\{sha256}:{name}.png"]
    for template in templates:
        path = naming.render(template, fields)
        assert path.endswith(".jpg"), path
        for candidate in naming.candidates(path, "http://site/" + value):
            assert_safe(candidate)
            assert_safe(naming.thumb_path(candidate, "small").removeprefix("thumbs/small/"))


def test_deep_page_paths_are_folded():
    path = naming.render("{page_path}/{name}.{ext}", {"page_path": "/a" * 40, "name": "n", "ext": "png"})
    assert path == "/".join(["a"] * (naming.MAX_DEPTH - 1) + ["_".join(["a"] * (40 - naming.MAX_DEPTH + 1)), "n.png"])


def test_names_are_told_apart_by_url_ignoring_case():
    first, second = naming.candidates("g/x.jpg", "http://a/x.jpg"), naming.candidates("g/X.jpg", "http://b/X.jpg")
    digest = hashlib.sha1(b"http://b/X.jpg").hexdigest()
    assert second[1:] == [f"g/X~{digest[:8]}.jpg", f"g/X~{digest[:16]}.jpg", f"g/X~{digest}.jpg"]
    assert naming.claim_key(first[0]) == naming.claim_key(second[0])  # x.jpg and X.jpg are one file on macOS
    assert naming.claim_key("g/x.jpg") == naming.claim_key("g/x.png")  # one thumbnail name: g/x.jpg
    assert naming.candidates("g/x.jpg", "http://a/x.jpg") == first  # the same on every crawl


@pytest.mark.parametrize(("template", "says"), [
    ("{nope}.{ext}", "unknown field {nope}"),
    ("{name.__class__}", "unknown field"),
    ("{0}", "unknown field {0}"),
    ("photo.jpg", "uses no field"),
    ("{index:s}", "not a format for a number"),
    ("{name:03d}", "not a format for text"),
    ("{name!r}", "plain format spec"),
    ("{name", "is not a template"),
])
def test_bad_templates_say_why(template, says):
    with pytest.raises(naming.TemplateError, match=None) as caught:
        naming.check_template(template)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_page_fields():
    fields = naming.page_fields("https://cdn.example/i/Beach%20Day.JPG?w=1", "https://site.example/albums/summer/page/3",
                                "Summer", 4, "alt", "Wed, 21 Oct 2015 07:28:00 GMT")
    assert fields == {"host": "site.example", "image_host": "cdn.example", "page_path": "/albums/summer/page/3",
                      "page_title": "Summer", "album": "summer", "index": 5, "name": "Beach Day", "alt": "alt",
                      "date": "2015-10-21"}


# -- crawls ----------------------------------------------------------------------------


def jpegs(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [make_image(rng, "jpg", f"img {seed}-{n}") for n in range(count)]


def crawl(site: LocalSite, tmp_path, template: str, **settings):
    result = run_crawl(tmp_path, "-a", f"url={site.url('/gallery/')}", store=tmp_path / "store",
                       settings={"IMGCRAWL_WORKER_POOL": "thread", "IMGCRAWL_FILE_NAME": template, **settings})
    assert result.returncode == 0, result.log[-3000:]
    assert "Traceback" not in result.log and " ERROR: " not in result.log, result.log[-3000:]
    return result


def test_hostile_names_and_title_stay_inside_the_store(tmp_path):
    names = ["..%2F..%2Fescape", "CON", "a" * 300, "%00nul", ".hidden", "back%5Cslash%5C..%5C..%5Cx", "%E2%80%AEgpj"]
    bodies = dict(zip(names, jpegs(len(names), 1)))
    imgs = "".join(f'<img src="/img/{n}.jpg" alt="../{n}">' for n in names)
    title = "Summer: ../../etc/ <CON> \u202e"
    site = LocalSite({"/gallery/": ("text/html", f"<html><head><title>{title}</title></head><body>{imgs}".encode()),
                      **{f"/img/{n}.jpg": ("image/jpeg", body) for n, body in bodies.items()}}).start()
    try:
        result = crawl(site, tmp_path, GALLERY_DL_STYLE)
    finally:
        site.stop()
    lines = {line["url"]: line for line in result.manifest()}
    assert len(lines) == len(names)
    store = result.store.resolve()
    for n, body in bodies.items():
        line = lines[site.url(f"/img/{n}.jpg")]
        assert line["status"] == "downloaded", line
        relative = line["path"].removeprefix("full/")
        assert_safe(relative)
        assert relative.startswith("127.0.0.1/Summer_ .._.._etc_ _CON_/")
        assert (store / line["path"]).resolve().is_relative_to(store / "full")
        assert (store / line["path"]).read_bytes() == body
        assert line["thumbs"] == {"small": naming.thumb_path(relative, "small")}
        assert (store / line["thumbs"]["small"]).is_file()
    # Nothing was written outside the store, and nothing is left in staging.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert not any((store / ".imgcrawl" / "staging").iterdir())
    assert sum(1 for p in (store / "full").rglob("*") if p.is_file()) == len(names)


def test_collisions_get_the_same_names_on_every_crawl_and_dedup_still_works(tmp_path):
    bodies = jpegs(3, 2)
    images = {"/a/x.jpg": bodies[0], "/b/x.jpg": bodies[1], "/c/X.jpg": bodies[2], "/d/copy.jpg": bodies[0]}
    site = LocalSite({"/gallery/": ("text/html", "".join(f'<img src="{p}">' for p in images).encode()),
                      **{p: ("image/jpeg", body) for p, body in images.items()}}).start()
    # What a crawl killed mid-image left in staging an hour ago goes; a running crawl's stays.
    staging = tmp_path / "store" / ".imgcrawl" / "staging"
    staging.mkdir(parents=True)
    (staging / "left.jpg").write_bytes(b"x")
    os.utime(staging / "left.jpg", (time.time() - 7200, time.time() - 7200))
    (staging / "in-use.jpg").write_bytes(b"y")
    try:
        # The manifest: one line per image, as the latest crawl left it.
        first = crawl(site, tmp_path, "{name}.{ext}").manifest()
        hits = dict(site.hits)
        again = crawl(site, tmp_path, "{name}.{ext}").manifest()  # within IMAGES_EXPIRES
        assert dict(site.hits) == {**hits, "/gallery/": 2, "/robots.txt": 2}  # no image fetched
        # No validators: every image downloaded again, under the same name.
        result = crawl(site, tmp_path, "{name}.{ext}", IMAGES_EXPIRES=0)
        refetched = result.manifest()
    finally:
        site.stop()
    assert sorted(p.name for p in staging.iterdir()) == ["in-use.jpg"]
    paths = {line["url"]: line["path"] for line in first if line["status"] == "downloaded"}
    assert len(paths) == len(images)
    # x.jpg, x.jpg and X.jpg (one name on a case-insensitive disk): whichever claims it first
    # gets it, the others their URL's name, the same whatever the order.
    plain = 0
    for path in ("/a/x.jpg", "/b/x.jpg", "/c/X.jpg"):
        url, stored = site.url(path), paths[site.url(path)]
        assert (result.store / stored).read_bytes() == images[path]
        if stored == f"full/{path[3]}.jpg":
            plain += 1
        elif stored != paths[site.url("/d/copy.jpg")]:  # /a's bytes may be kept as copy.jpg's
            assert stored == f"full/{path[3]}~{hashlib.sha1(url.encode()).hexdigest()[:8]}.jpg", stored
    assert plain <= 1
    # The same bytes under two URLs: stored once, both lines name that file.
    assert paths[site.url("/d/copy.jpg")] == paths[site.url("/a/x.jpg")]
    files = sorted(p.name for p in (result.store / "full").iterdir())
    assert files == sorted({p[5:] for p in paths.values()}) and len(files) == 3
    assert [line["status"] for line in again] == ["uptodate"] * len(images)
    assert [line["status"] for line in refetched] == ["downloaded"] * len(images)
    assert {line["url"]: line["path"] for line in again} == {line["url"]: line["path"] for line in refetched} == paths
