"""Promises the rest of the suite did not hold: each test here fails when its promise is broken.

* Pillow, the image files and the "already stored?" checks never run on the reactor thread,
  with either worker pool (README, ``IMGCRAWL_WORKER_POOL``): real crawls watched by
  ``tests/reactor_watch.py``, installed as the crawl's ``sitecustomize``.
* ``imaging.atomic_write``: a write killed midway never leaves a half file at the final name.
* ``IMGCRAWL_MAX_INFLIGHT`` bounds the images downloading at once.
* ``IMAGES_EXPIRES``: a stored image is fetched again once it is due, and only then.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from conftest import CRAWL_TIMEOUT, REPO, CrawlResult, LocalSite, answer, crawl_command, run_crawl
from imgcrawl.demo import build_gallery

WATCH = Path(__file__).with_name("reactor_watch.py")


def jpeg(seed: int, size=(64, 48)) -> bytes:
    buf = BytesIO()
    Image.new("RGB", size, (seed * 37 % 256, 120, 200 - seed % 100)).save(buf, "JPEG")
    return buf.getvalue()


# -- the reactor thread --------------------------------------------------------------

def watch_env(env: dict, tmp: Path, store: Path, name: str) -> Path:
    """``env`` with tests/reactor_watch.py as ``sitecustomize``; returns the report directory."""
    site_dir = tmp / "watch-sitecustomize"
    site_dir.mkdir(exist_ok=True)
    shutil.copyfile(WATCH, site_dir / "sitecustomize.py")
    out = tmp / name
    out.mkdir()
    env.update(PYTHONPATH=os.pathsep.join([str(site_dir), env.get("PYTHONPATH", str(REPO))]),
               REACTOR_WATCH_DIR=str(out), REACTOR_WATCH_STORE=str(store.resolve()))
    env.pop("REACTOR_WATCH_CHILD", None)
    return out


def watch_report(out: Path) -> dict:
    """The one report: the watched process's own (its image workers are not watched)."""
    reports = sorted(out.glob("watch-*.json"))
    assert len(reports) == 1, f"expected one report (the main process only), got {reports}"
    return json.loads(reports[0].read_text())


def watched_crawl(tmp: Path, store: Path, name: str, *args: str, settings: dict) -> tuple[CrawlResult, dict]:
    cmd, env = crawl_command(store, *args, settings=settings)
    out = watch_env(env, tmp, store, name)
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=CRAWL_TIMEOUT)
    result = CrawlResult(proc.returncode, proc.stdout + proc.stderr, store)
    assert result.returncode == 0, result.log[-3000:]
    assert "'finish_reason': 'finished'" in result.log and "Traceback" not in result.log, result.log[-3000:]
    report = watch_report(out)
    # Scrapy ran the reactor on the main thread: what the watch saw there is the reactor thread.
    assert report["reactor_thread"] == report["main_thread"], report
    return result, report


def assert_none_on_reactor(report: dict, *kinds: str) -> None:
    found = on_reactor(report, *kinds)
    assert not found, f"{len(found)} on the reactor thread, e.g.:\n" + "\n".join(found[:10])


def on_reactor(report: dict, *kinds: str) -> list[str]:
    """The violations of these kinds, each with the innermost imgcrawl frame that made it."""
    found = []
    for v in report["violations"]:
        if v["kind"] in kinds:
            ours = [f for f in v["stack"] if "/imgcrawl/" in f]
            found.append(f"{v['kind']}: {v['detail']} (from {ours[0] if ours else v['stack'][0]})")
    return found


@pytest.fixture(scope="module", params=["process", "thread"])
def watched_crawls(request, tmp_path_factory):
    """The demo gallery crawled, then crawled again into the same store (every image
    already stored: the lookups and their stat calls), both watched."""
    pool = request.param
    tmp = tmp_path_factory.mktemp(f"watched-{pool}")
    store = tmp / "store"
    site = LocalSite(build_gallery()).start()
    args = ("-a", f"url={site.url('/gallery/')}")
    try:
        first = watched_crawl(tmp, store, "first", *args, settings={"IMGCRAWL_WORKER_POOL": pool})
        again = watched_crawl(tmp, store, "again", *args, settings={"IMGCRAWL_WORKER_POOL": pool})
    finally:
        site.stop()
    stored = {line["url"]: line for line in first[0].crawl_lines(0) if line["status"] == "downloaded"}
    assert len(stored) == 18
    for url, line in stored.items():  # the crawl did its work: every image stored byte-exact
        assert (store / line["path"]).read_bytes() == site.files[url.split(str(site.port), 1)[1]][1]
    assert "'file_status_count/uptodate': 18" in again[0].log
    return pool, first, again


def test_pillow_and_store_writes_never_run_on_the_reactor_thread(watched_crawls):
    pool, (_, first), (_, again) = watched_crawls
    assert_none_on_reactor(first, "pillow", "store-write")
    assert_none_on_reactor(again, "pillow", "store-write")  # the broken image is tried again
    # The wrappers were live: the work was seen, elsewhere.
    if pool == "thread":
        assert first["off_reactor"]["pillow"] > 18 and first["off_reactor"]["store-write"] > 18 * 3
    else:  # not even in this process: in the imgcrawl.worker processes
        assert "pillow" not in first["off_reactor"]


def test_already_stored_lookups_and_stats_never_run_on_the_reactor_thread(watched_crawls):
    _, (_, first), (_, again) = watched_crawls
    assert_none_on_reactor(first, "index", "store-stat")
    assert_none_on_reactor(again, "index", "store-stat")
    # The re-crawl looked up every image and stat'ed its original and thumbnail: elsewhere.
    assert again["off_reactor"]["store-stat"] >= 18 * 2 and again["off_reactor"]["index"] >= 18


def test_closing_the_index_never_blocks_the_reactor_thread(watched_crawls):
    """The watch makes closing the SQLite connection take 1 s: the reactor thread must not
    wait for it (neither by closing it itself nor by joining the thread that does)."""
    _, (_, first), (_, again) = watched_crawls
    for report in (first, again):
        assert_none_on_reactor(report, "index-close", "blocking-join")
        assert report["off_reactor"]["index-close"] == 1


def test_contact_sheet_records_are_not_written_on_the_reactor_thread(watched_crawls):
    """README: "file writes ... never on the reactor thread"; the contact sheet is "written
    ... off the reactor thread". Its records are buffered in a temporary file as items pass."""
    _, (first_result, first), (_, again) = watched_crawls
    assert (first_result.store / "index.html").is_file()
    assert_none_on_reactor(first, "file-write")
    assert_none_on_reactor(again, "file-write")


CONTROL = r'''
import os, subprocess, sys, tempfile, threading, time
from io import BytesIO
from pathlib import Path

from PIL import Image

from imgcrawl import imaging
from imgcrawl.index import SQLiteIndex

store = Path(os.environ["REACTOR_WATCH_STORE"])


def work(tag):
    buf = BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    imaging.process_image(buf.getvalue(), str(store / "full" / f"{tag}.jpg"),
                          {"small": ((16, 16), str(store / "thumbs" / "small" / f"{tag}.jpg"))})
    assert (store / "full" / f"{tag}.jpg").exists()
    with open(store / "full" / f"{tag}-plain.jpg", "wb") as f:
        f.write(b"plain")
    with open(store / "manifest.jsonl", "ab") as f:  # the one file excepted
        f.write(b"{}\n")
    with tempfile.TemporaryFile("w+") as f:
        f.write("a record\n")
    index = SQLiteIndex(store / ".imgcrawl" / f"{tag}.sqlite")
    index.get("http://site.example/a.jpg")
    index.close()


if sys.argv[1] == "main":
    work("main")
    sleeper = threading.Thread(target=time.sleep, args=(1.0,), name="sleeper")
    sleeper.start()
    sleeper.join()
    # A child process inherits the environment: it must not report.
    subprocess.run([sys.executable, "-c", "from PIL import Image; Image.new('RGB', (2, 2)).load()"], check=True)
else:
    worker = threading.Thread(target=work, args=("thread",))
    worker.start()
    while worker.is_alive():
        worker.join(0.1)  # short waits: none is a blocking join
'''


def test_the_reactor_watch_sees_calls_on_the_main_thread_and_only_there(tmp_path):
    """The positive control: the same watch records each kind of call made on the main
    thread, and none made on another thread."""
    (tmp_path / "control.py").write_text(CONTROL)
    store = tmp_path / "store"
    reports = {}
    for where in ("main", "thread"):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = watch_env(env, tmp_path, store, f"watch-{where}")
        proc = subprocess.run([sys.executable, "control.py", where], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports[where] = watch_report(out)
    seen = {(v["kind"], v["detail"].split(" ", 1)[0]) for v in reports["main"]["violations"]}
    assert {
        ("pillow", "PIL.Image.open"), ("pillow", "ImageFile.load"), ("pillow", "Image.thumbnail"),
        ("pillow", "Image.save"),
        ("store-write", "os.open"), ("store-write", "os.write"), ("store-write", "rename"),
        ("store-write", "open('wb')"), ("store-write", "BufferedWriter.write"),
        ("store-stat", "stat"), ("index", "SELECT"), ("index-close", "close"),
        ("file-write", "TextIOWrapper.write"), ("blocking-join", "sleeper"),
    } <= seen, seen
    assert not [v for v in reports["main"]["violations"] if "manifest.jsonl" in v["detail"]]
    assert reports["thread"]["violations"] == []
    off = reports["thread"]["off_reactor"]
    assert {"pillow", "store-write", "store-stat", "index", "index-close"} <= set(off), off


# -- atomic_write ----------------------------------------------------------------------

LIMIT = 1 << 20  # RLIMIT_FSIZE: the kernel stops the writer at this many bytes

KILLED_WRITE = r'''
import resource, signal, sys

from imgcrawl.imaging import atomic_write

if sys.argv[2] == "die":  # the kernel's default: killed. Python ignores SIGXFSZ (EFBIG instead)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
try:
    atomic_write(sys.argv[1], b"new!" * int(sys.argv[3]))  # four times the limit
except OSError as exc:
    print(exc.errno)
'''


def killed_write(tmp_path: Path, target: Path, mode: str) -> subprocess.CompletedProcess:
    (tmp_path / "killed_write.py").write_text(KILLED_WRITE)
    return subprocess.run(
        [sys.executable, "killed_write.py", str(target), mode, str(LIMIT)], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("old", [None, b"the old version, whole"])
def test_a_write_killed_midway_leaves_no_half_file(tmp_path, old):
    """The writer is killed by the kernel (SIGXFSZ) after exactly LIMIT bytes, in the
    middle of its write: the final name holds nothing, or the old version whole."""
    store = tmp_path / "full"
    store.mkdir()
    target = store / "a.jpg"
    if old is not None:
        target.write_bytes(old)
    proc = killed_write(tmp_path, target, "die")
    assert proc.returncode == -signal.SIGXFSZ, (proc.returncode, proc.stderr[-2000:])
    if old is None:
        assert not target.exists(), f"a half file at the final name: {target.stat().st_size} bytes"
    else:
        assert target.read_bytes() == old
    # It was killed mid-write, not before: LIMIT bytes went to a temporary name.
    assert [p.stat().st_size for p in store.iterdir() if p != target] == [LIMIT]


def test_a_failed_write_leaves_neither_a_half_file_nor_its_temp_file(tmp_path):
    store = tmp_path / "full"
    store.mkdir()
    target = store / "a.jpg"
    proc = killed_write(tmp_path, target, "error")
    assert proc.returncode == 0 and proc.stdout.split() == [str(errno.EFBIG)], (proc.stdout, proc.stderr[-2000:])
    assert list(store.iterdir()) == []


WORKER = (  # imgcrawl.worker's own loop, with the kernel's default for SIGXFSZ: killed
    "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
    "from imgcrawl.worker import serve; serve()"
)


def test_an_image_worker_killed_while_writing_leaves_no_half_original(tmp_path):
    """An image worker (``imgcrawl.worker.serve``) given a 3 MB BMP is killed by the kernel
    after LIMIT bytes of the original, as a kill -9 or the OOM killer would: nothing at
    the final name."""
    buf = BytesIO()
    Image.new("RGB", (1200, 900), (10, 200, 90)).save(buf, "BMP")
    body = buf.getvalue()
    assert len(body) > 3 * LIMIT
    original = tmp_path / "store" / "full" / "a.bmp"
    original.parent.mkdir(parents=True)

    def limit_file_size():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=limit_file_size,
    )
    job = pickle.dumps(("process_image", (body, str(original), {}, 100_000_000)))
    _, stderr = worker.communicate(job, timeout=60)
    assert worker.returncode == -signal.SIGXFSZ, (worker.returncode, stderr[-2000:])
    assert not original.exists(), f"a half original at the final name: {original.stat().st_size} bytes"
    assert [p.stat().st_size for p in original.parent.iterdir() if p != original] == [LIMIT]


# -- IMGCRAWL_MAX_INFLIGHT -------------------------------------------------------------

def slow_gallery(images: int, delay: float) -> tuple[LocalSite, dict]:
    """One page of ``images`` images, each answered after ``delay`` s; ``seen["peak"]`` is
    the most image requests the server had in progress at once."""
    bodies = {f"/img/{i}.jpg": jpeg(i) for i in range(images)}
    page = "".join(f'<img src="{path}">' for path in bodies)
    site = LocalSite({"/": ("text/html", f"<html><body>{page}</body></html>".encode())})
    seen = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def slow(h):
        with lock:
            seen["now"] += 1
            seen["peak"] = max(seen["peak"], seen["now"])
        time.sleep(delay)
        with lock:  # before the answer: the client cannot have it (and ask again) sooner
            seen["now"] -= 1
        answer(h, "image/jpeg", bodies[h.path])

    site.handlers.update({path: slow for path in bodies})
    site.images = bodies
    return site.start(), seen


@pytest.mark.parametrize(("max_inflight", "expected_peak"), [(2, (1, 2)), (8, (4, 8))])
def test_max_inflight_bounds_the_images_in_progress(tmp_path, max_inflight, expected_peak):
    """Twelve slow images on one page, CONCURRENT_REQUESTS far above the bound: the server
    never has more image requests in progress than IMGCRAWL_MAX_INFLIGHT (and with a
    looser bound it does get more than two at once, so the site allows concurrency)."""
    site, seen = slow_gallery(images=12, delay=0.25)
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/')}", settings={
            "IMGCRAWL_MAX_INFLIGHT": max_inflight, "CONCURRENT_REQUESTS": 32,
            "CONCURRENT_REQUESTS_PER_DOMAIN": 32, "IMAGES_THUMBS": "{}",
        })
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    stored = [line for line in result.manifest() if line["status"] == "downloaded"]
    assert len(stored) == 12 and all(site.hits[path] == 1 for path in site.images)
    low, high = expected_peak
    assert low <= seen["peak"] <= high, seen


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, 64),  # the defaults: 16 connections per host, CONCURRENT_REQUESTS 128
    ({"CONCURRENT_REQUESTS_PER_DOMAIN": 32}, 96),  # 128 would leave pages no room under 128
    ({"CONCURRENT_REQUESTS_PER_DOMAIN": 32, "CONCURRENT_REQUESTS": 256}, 128),
    ({"CONCURRENT_REQUESTS_PER_DOMAIN": 4}, 16),
    ({"IMGCRAWL_MAX_INFLIGHT": 7}, 7),
])
def test_max_inflight_default_follows_the_connections_per_host(settings, expected):
    """Four images per connection to a host (a connection's next image waits while others
    are stored), under three quarters of CONCURRENT_REQUESTS (pages need the rest)."""
    from scrapy.utils.test import get_crawler  # noqa: PLC0415

    from imgcrawl.pipelines import GalleryImagesPipeline  # noqa: PLC0415
    from imgcrawl.settings import CONCURRENT_REQUESTS, CONCURRENT_REQUESTS_PER_DOMAIN  # noqa: PLC0415

    crawler = get_crawler(settings_dict={"CONCURRENT_REQUESTS": CONCURRENT_REQUESTS,
                                         "CONCURRENT_REQUESTS_PER_DOMAIN": CONCURRENT_REQUESTS_PER_DOMAIN,
                                         "IMAGES_STORE": "unused", **settings})
    assert GalleryImagesPipeline.from_crawler(crawler).inflight.limit == expected


# -- IMAGES_EXPIRES --------------------------------------------------------------------

def test_images_expires_refetches_stored_images_once_due_and_only_then(tmp_path):
    bodies = {f"/img/{i}.jpg": jpeg(i, (80 + i, 60)) for i in range(6)}
    page = "".join(f'<img src="{path}">' for path in bodies)
    site = LocalSite({"/": ("text/html", page.encode()),
                      **{p: ("image/jpeg", b) for p, b in bodies.items()}}).start()
    url = site.url("/")

    def crawl(settings=None) -> tuple[CrawlResult, dict]:
        before = {p: site.hits[p] for p in bodies}
        result = run_crawl(tmp_path, "-a", f"url={url}", settings=settings)
        assert result.returncode == 0, result.log[-3000:]
        return result, {p: site.hits[p] - before[p] for p in bodies}

    try:
        first, fetched = crawl()
        assert set(fetched.values()) == {1}
        stored = {line["url"]: (line["path"], line["sha256"]) for line in first.manifest()}
        kept, fetched = crawl()  # default: 90 days
        assert set(fetched.values()) == {0}, fetched
        assert "'file_status_count/uptodate': 6" in kept.log
        due, fetched = crawl({"IMAGES_EXPIRES": 0})  # every stored image is due now
        assert set(fetched.values()) == {1}, fetched
        assert "'file_status_count/downloaded': 6" in due.log
        again, fetched = crawl()  # stored anew: fresh again
        assert set(fetched.values()) == {0}, fetched
    finally:
        site.stop()
    downloaded = {line["url"]: line for line in due.crawl_lines(2)}  # the third crawl's lines
    assert set(downloaded) == {site.url(p) for p in bodies}
    for u, line in downloaded.items():
        assert line["status"] == "downloaded" and (line["path"], line["sha256"]) == stored[u]
        assert (due.store / line["path"]).read_bytes() == bodies[u.split(str(site.port), 1)[1]]
