"""Restarts and re-crawls: nothing lost, nothing fetched twice, proven by server-side hits."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from conftest import CRAWL_TIMEOUT, CrawlResult, LocalSite, answer, crawl_command, run_crawl

PAGES, PER_PAGE = 3, 8
# Worker threads, or the default: worker processes (two, so the machine's cores do not
# change what a test sees).
POOLS = {
    "thread": {"IMGCRAWL_WORKER_POOL": "thread"},
    "process": {"IMGCRAWL_WORKER_POOL": "process", "IMGCRAWL_WORKERS": 2},
}
SLOW = {"CONCURRENT_REQUESTS": 2, **POOLS["thread"]}


def jpeg(seed: int) -> bytes:
    buf = BytesIO()
    Image.new("RGB", (48 + seed, 32), (seed * 7 % 256, 90, 200)).save(buf, "JPEG")
    return buf.getvalue()


def listing(pages: int, per_page: int, image: Callable[[int], bytes], ext: str) -> tuple[dict, dict]:
    """``pages`` listing pages, each linking the next, of ``per_page`` images made by
    ``image(n)``: the pages' files and {image path: bytes}."""
    files, images = {}, {}
    for page in range(1, pages + 1):
        imgs = "".join(f'<img src="/img/p{page}-{i}.{ext}" alt="p{page}-{i}">' for i in range(per_page))
        more = f'<a rel="next" href="/gallery/?page={page + 1}">next</a>' if page < pages else ""
        files[f"/gallery/?page={page}"] = ("text/html", f"<html><body>{imgs}{more}</body></html>".encode())
        images.update({f"/img/p{page}-{i}.{ext}": image(page * per_page + i) for i in range(per_page)})
    return files, images


def gallery(delay: float = 0.0) -> LocalSite:
    """PAGES listing pages of PER_PAGE images; each image answer takes ``delay`` seconds."""
    files, images = listing(PAGES, PER_PAGE, jpeg, "jpg")
    site = LocalSite(files)

    def slow(h):
        time.sleep(delay)
        answer(h, "image/jpeg", images[h.path])

    site.handlers.update({path: slow for path in images})
    site.images = images
    return site.start()


@pytest.fixture
def site():
    site = gallery()
    yield site
    site.stop()


@pytest.fixture
def slow_site():
    site = gallery(delay=0.15)
    yield site
    site.stop()


def indexed_urls(store: Path) -> set[str]:
    path = store / ".imgcrawl" / "index.sqlite"
    if not path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return {row[0] for row in db.execute("SELECT url FROM images")}
    except sqlite3.OperationalError:  # created but schema not written yet
        return set()


def crawl_until(tmp_path: Path, store: Path, site: LocalSite, stored: int, settings: dict,
                stop: signal.Signals) -> tuple[set[str], str]:
    """Start a crawl in a process group of its own, send ``stop`` to the whole group (as
    Ctrl-C, systemd and ``kill -- -PGID`` do: the image workers get it too) once ``stored``
    images are indexed; the indexed URLs then."""
    cmd, env = crawl_command(store, "-a", f"url={site.url('/gallery/?page=1')}", settings=settings)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(indexed_urls(store)) < stored and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        before = indexed_urls(store)
        os.killpg(proc.pid, stop)
        log, _ = proc.communicate(timeout=CRAWL_TIMEOUT)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        proc.wait()
    assert stored <= len(before) < len(site.images), "the crawl was not stopped mid-way"
    return before, log


def assert_all_stored_once(result: CrawlResult, site: LocalSite) -> None:
    """Every image stored byte-exact; one file per image under full/, no half files."""
    lines = {}
    for line in result.manifest():
        lines.setdefault(line["url"], []).append(line)
    for path, body in site.images.items():
        statuses = [line["status"] for line in lines[site.url(path)]]
        assert statuses and set(statuses) <= {"downloaded", "uptodate"}, (path, statuses)
        assert (result.store / lines[site.url(path)][-1]["path"]).read_bytes() == body
    full = [p for p in (result.store / "full").iterdir() if not p.name.startswith(".tmp-")]
    assert sorted(p.read_bytes() for p in full) == sorted(site.images.values())


@pytest.mark.parametrize("pool", POOLS)
def test_sigint_pause_then_resume_fetches_each_image_once(slow_site, tmp_path, pool):
    store = tmp_path / "store"
    settings = {**SLOW, **POOLS[pool], "JOBDIR": tmp_path / "job"}
    _, log = crawl_until(tmp_path, store, slow_site, 4, settings, signal.SIGINT)
    assert "'finish_reason': 'shutdown'" in log
    assert "image worker exited" not in log  # Ctrl-C reached the workers too: none died
    resumed = run_crawl(tmp_path, "-a", f"url={slow_site.url('/gallery/?page=1')}", store=store,
                        settings=settings)
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert "'finish_reason': 'finished'" in resumed.log
    assert_all_stored_once(resumed, slow_site)
    assert all(slow_site.hits[path] == 1 for path in slow_site.images), slow_site.hits
    # The resumed crawl continued from the saved queue: listing pages were not fetched again.
    assert all(slow_site.hits[p] == 1 for p in slow_site.files if p.startswith("/gallery/"))


@pytest.mark.parametrize("pool", POOLS)
def test_kill_9_then_resume_loses_nothing_and_refetches_nothing_stored(slow_site, tmp_path, pool):
    store = tmp_path / "store"
    settings = {**SLOW, **POOLS[pool], "JOBDIR": tmp_path / "job"}
    stored_before_kill, _ = crawl_until(tmp_path, store, slow_site, 6, settings, signal.SIGKILL)
    # Whole files the kill left (written by rename), recorded in the index or not yet.
    on_disk = {p.stem for p in (store / "full").iterdir() if not p.name.startswith(".tmp-")}
    resumed = run_crawl(tmp_path, "-a", f"url={slow_site.url('/gallery/?page=1')}", store=store,
                        settings=settings)
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert "Traceback" not in resumed.log
    assert_all_stored_once(resumed, slow_site)
    # The killed crawl's journal was merged too (the resumed crawl does not visit its pages
    # again): one manifest line per image, the journals in the history, none pending.
    assert len(resumed.manifest()) == len(slow_site.images)
    assert 1 <= len(list((store / "crawls").glob("manifest-*.jsonl"))) <= 2
    assert not list((store / "crawls" / "pending").iterdir())
    for path in slow_site.images:
        # Stored before the kill: never fetched again. Others: at most once more (in flight).
        url = slow_site.url(path)
        stored = url in stored_before_kill or hashlib.sha1(url.encode()).hexdigest() in on_disk
        limit = 1 if stored else 2
        assert 1 <= slow_site.hits[path] <= limit, (path, slow_site.hits[path], stored)


def big_png_gallery(pages: int, per_page: int, delay: float) -> LocalSite:
    """Listing pages of big flat PNGs: small to send, slow to decode, so the image workers
    always hold jobs; each answer takes ``delay`` seconds, so images are in flight too."""
    buf = BytesIO()
    Image.new("RGB", (2400, 1800), (30, 90, 200)).save(buf, "PNG")
    base = buf.getvalue()

    def unique(n: int) -> bytes:  # the same pixels, other bytes: a text chunk before IEND
        data = b"Comment\x00image %d" % n
        chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
        return base[:-12] + chunk + base[-12:]

    files, images = listing(pages, per_page, unique, "png")
    site = LocalSite({**files, **{path: ("image/png", body) for path, body in images.items()}},
                     delays=dict.fromkeys(images, delay))
    site.images = images
    return site.start()


def test_sigterm_to_the_process_group_then_resume_loses_no_image(tmp_path):
    """systemd's stop and ``kill -- -PGID`` reach the image workers too: they must finish
    the jobs they hold (the crawl stops gracefully), and the resumed crawl stores the rest."""
    site = big_png_gallery(pages=10, per_page=20, delay=0.05)
    try:
        store = tmp_path / "store"
        settings = {**POOLS["process"], "JOBDIR": tmp_path / "job"}
        _, log = crawl_until(tmp_path, store, site, 40, settings, signal.SIGTERM)
        assert "Received SIGTERM, shutting down gracefully" in log, log[-3000:]
        assert "'finish_reason': 'shutdown'" in log, log[-3000:]
        assert "image worker exited" not in log, log[-3000:]  # no worker died under its jobs
        resumed = run_crawl(tmp_path, "-a", f"url={site.url('/gallery/?page=1')}", store=store,
                            settings=settings)
    finally:
        site.stop()
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert "'finish_reason': 'finished'" in resumed.log
    # Byte-exact, once each, and no line of either run says failed (worker-crashed).
    assert_all_stored_once(resumed, site)
    assert all(site.hits[path] == 1 for path in site.images), site.hits


def test_files_stored_without_their_index_rows_are_recorded_not_fetched_again(tmp_path):
    """``kill -9`` between a worker's rename and the index commit leaves whole files with no
    record (and maybe no thumbnails yet). Made deterministic: a crawl stores everything,
    then rows and thumbnails are taken away, as the kill would have left them."""
    gif = BytesIO()
    Image.new("P", (40, 30), 3).save(gif, "GIF")
    png = BytesIO()
    Image.new("RGB", (50, 20), (1, 2, 3)).save(png, "PNG")
    images = {
        "/img/a.jpg": jpeg(1),
        "/img/png-as.jpg": png.getvalue(),  # stored as .png: the bytes name the extension
        "/img/gif": gif.getvalue(),  # no extension in the URL
        "/img/old.jpg": jpeg(2),
        "/img/kept.jpg": jpeg(3),
    }
    page = "".join(f'<img src="{path}" alt="{path}">' for path in images)
    site = LocalSite({"/": ("text/html", f"<html><body>{page}</body></html>".encode()),
                      **{path: ("image/jpeg", body) for path, body in images.items()}}).start()
    try:
        url = site.url("/")
        first = run_crawl(tmp_path, "-a", f"url={url}", settings=POOLS["process"])
        assert first.returncode == 0, first.log[-3000:]
        stored = {line["url"]: line for line in first.manifest()}
        assert stored[site.url("/img/png-as.jpg")]["path"].endswith(".png")
        assert stored[site.url("/img/gif")]["path"].endswith(".gif")
        lost = [site.url(p) for p in ("/img/a.jpg", "/img/png-as.jpg", "/img/gif", "/img/old.jpg")]
        with sqlite3.connect(first.store / ".imgcrawl" / "index.sqlite") as db:
            for lost_url in lost:
                db.execute("DELETE FROM images WHERE url = ?", (lost_url,))
                db.execute("DELETE FROM contents WHERE sha256 = ?", (stored[lost_url]["sha256"],))
        for lost_url in lost[1:3]:  # killed before its thumbnail was written
            (first.store / stored[lost_url]["thumbs"]["small"]).unlink()
        old = first.store / stored[site.url("/img/old.jpg")]["path"]
        os.utime(old, (time.time() - 100 * 86400,) * 2)  # older than IMAGES_EXPIRES (90 days)
        second = run_crawl(tmp_path, "-a", f"url={url}", settings=POOLS["process"])
    finally:
        site.stop()
    assert second.returncode == 0, second.log[-3000:]
    assert {path: site.hits[path] for path in images} == {
        "/img/a.jpg": 1, "/img/png-as.jpg": 1, "/img/gif": 1, "/img/old.jpg": 2, "/img/kept.jpg": 1}
    assert "'imgcrawl/adopted': 3" in second.log
    again = {line["url"]: line for line in second.crawl_lines()}
    for path, body in images.items():
        line = again[site.url(path)]
        assert line["status"] == ("downloaded" if path == "/img/old.jpg" else "uptodate"), line
        assert line["path"] == stored[site.url(path)]["path"]
        assert line["sha256"] == hashlib.sha256(body).hexdigest()
        assert (second.store / line["path"]).read_bytes() == body
        with Image.open(second.store / line["thumbs"]["small"]) as thumb:
            thumb.load()
    assert indexed_urls(second.store) == {site.url(p) for p in images}


def test_recrawl_fetches_nothing_and_reads_no_stored_file(site, tmp_path):
    url = site.url("/gallery/?page=1")
    first = run_crawl(tmp_path, "-a", f"url={url}", settings=SLOW)
    assert first.returncode == 0, first.log[-3000:]
    # Same size, other bytes: a check that read the file would notice and fetch it again.
    line = next(line for line in first.manifest() if line["status"] == "downloaded")
    original = first.store / line["path"]
    tampered = bytes(b ^ 0xFF for b in original.read_bytes())
    original.write_bytes(tampered)
    hits = sum(site.hits[p] for p in site.images)
    second = run_crawl(tmp_path, "-a", f"url={url}", settings=SLOW)
    assert second.returncode == 0
    assert sum(site.hits[p] for p in site.images) == hits == len(site.images)
    assert f"'file_status_count/uptodate': {len(site.images)}" in second.log
    assert original.read_bytes() == tampered


def test_thumbnails_remade_only_when_images_thumbs_changes(site, tmp_path):
    url = site.url("/gallery/?page=1")
    small = {"IMAGES_THUMBS": json.dumps({"small": [32, 32]})}
    first = run_crawl(tmp_path, "-a", f"url={url}", settings={**SLOW, **small})
    assert first.returncode == 0, first.log[-3000:]
    thumbs = sorted((first.store / "thumbs" / "small").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in thumbs]
    same = run_crawl(tmp_path, "-a", f"url={url}", settings={**SLOW, **small})
    assert "imgcrawl/rethumbed" not in same.log
    assert [p.stat().st_mtime_ns for p in thumbs] == mtimes
    both = {"IMAGES_THUMBS": json.dumps({"small": [32, 32], "big": [40, 40]})}
    changed = run_crawl(tmp_path, "-a", f"url={url}", settings={**SLOW, **both})
    assert changed.returncode == 0, changed.log[-3000:]
    assert f"'imgcrawl/rethumbed': {len(site.images)}" in changed.log
    assert all(site.hits[p] == 1 for p in site.images)  # from the stored originals
    for line in changed.crawl_lines():
        assert set(line["thumbs"]) == {"small", "big"}
        with Image.open(changed.store / line["thumbs"]["big"]) as big:
            assert max(big.size) == 40


def test_same_bytes_under_two_urls_are_stored_once(tmp_path):
    body = jpeg(3)
    page = b'<html><body><img src="/a.jpg" alt="a"><img src="/b/copy.jpg" alt="b"></body></html>'
    site = LocalSite({"/": ("text/html", page), "/a.jpg": ("image/jpeg", body),
                      "/b/copy.jpg": ("image/jpeg", body)}).start()
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/')}", settings=SLOW)
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    lines = {line["url"]: line for line in result.manifest()}
    a, b = lines[site.url("/a.jpg")], lines[site.url("/b/copy.jpg")]
    assert a["path"] == b["path"] and a["thumbs"] == b["thumbs"]
    assert a["sha256"] == b["sha256"] == hashlib.sha256(body).hexdigest()
    assert [p.read_bytes() for p in (result.store / "full").iterdir()] == [body]
    assert len(list((result.store / "thumbs" / "small").iterdir())) == 1
    assert "'imgcrawl/duplicate_content': 1" in result.log


def test_a_killed_crawls_half_written_journal_line_is_cut_and_the_rest_merged(site, tmp_path):
    pending = tmp_path / "store" / "crawls" / "pending"
    pending.mkdir(parents=True)
    whole = json.dumps({"url": "http://example.invalid/a.jpg", "status": "downloaded"})
    journal = pending / "manifest-20200101T000000.000000Z-0badc0de.jsonl"
    journal.write_text(whole + "\n" + whole[:25])  # as a crawl killed mid-write leaves it
    result = run_crawl(tmp_path, "-a", f"url={site.url('/gallery/?page=1')}", settings=SLOW)
    assert result.returncode == 0, result.log[-3000:]
    lines = result.manifest()  # every line parses
    assert {line["url"] for line in lines} == {"http://example.invalid/a.jpg"} | {site.url(p) for p in site.images}
    history = tmp_path / "store" / "crawls" / journal.name
    assert f"Cut a half-written last line from {history} (its crawl was killed)" in result.log
    assert history.read_text() == whole + "\n" and not journal.exists()
