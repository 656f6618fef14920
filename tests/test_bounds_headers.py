"""A response whose headers never end is refused once they pass IMGCRAWL_MAX_HEADER_BYTES.

Twisted bounds each header line, not their number: such a response grew in memory until
DOWNLOAD_TIMEOUT. Now the crawl gives up on it at once, in one line (``too-large``), with
memory untouched, and stores the other images.
"""

from __future__ import annotations

import json
import sys
import time
from io import BytesIO

import pytest
from PIL import Image

from conftest import LocalSite, run_crawl

SENT_CAP = 1 << 30  # the server's own bound: 1 GiB of headers per response, then it stops
TIMEOUT = 20  # DOWNLOAD_TIMEOUT of the crawl: what the endless responses took before
PEAK_RSS_KB = 200 * 1024

# Runs the crawl command given after the output path and records the crawl process's
# peak RSS (VmHWM) and its image workers', polling /proc.
WATCH_RSS = r'''
import json, os, subprocess, sys, time

def hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
    except (OSError, StopIteration):
        return 0

def children(pid):
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found

out, cmd = sys.argv[1], sys.argv[2:]
proc = subprocess.Popen(cmd)
peaks = {}
while proc.poll() is None:
    for pid in [proc.pid, *children(proc.pid)]:
        peaks[pid] = max(peaks.get(pid, 0), hwm(pid))
    time.sleep(0.02)
with open(out, "w") as f:
    json.dump({"crawl_kb": peaks.pop(proc.pid, 0), "workers_kb": sorted(peaks.values())}, f)
sys.exit(proc.returncode)
'''


def jpeg(seed: int) -> bytes:
    buf = BytesIO()
    Image.new("RGB", (60 + seed, 40), (seed * 40 % 256, 90, 140)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    sent: dict[str, int] = {}
    good = {f"/good{i}.jpg": jpeg(i) for i in range(3)}

    def endless(h):
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n")
        line = b"X-Padding: " + b"a" * 1000 + b"\r\n"
        sent[h.path] = 0
        try:
            while sent[h.path] < SENT_CAP:
                h.wfile.write(line * 64)
                sent[h.path] += 64 * len(line)
        except OSError:
            pass
        h.close_connection = True

    images = "".join(f'<img src="{p}">' for p in [*good, "/endless.jpg"])
    page = f'{images}<a rel="next" href="/endless-page/">next</a>'
    site = LocalSite({"/": ("text/html", page.encode()), **{p: ("image/jpeg", b) for p, b in good.items()}},
                     handlers={"/endless.jpg": endless, "/endless-page/": endless})
    site.start()
    tmp = tmp_path_factory.mktemp("bounds-headers")
    started = time.monotonic()
    try:
        result = run_crawl(tmp, "-a", f"url={site.url('/')}", settings={"DOWNLOAD_TIMEOUT": TIMEOUT},
                           wrapper=(sys.executable, "-c", WATCH_RSS, str(tmp / "rss.json")), timeout=120)
    finally:
        site.stop()
    elapsed = time.monotonic() - started
    rss = json.loads((tmp / "rss.json").read_text())
    return site, result, {line["url"]: line for line in result.manifest()}, good, sent, elapsed, rss


def test_the_crawl_finishes_quickly_in_little_memory(crawl):
    _, result, _, _, sent, elapsed, rss = crawl
    assert result.returncode == 0, result.log[-3000:]
    assert "'finish_reason': 'finished'" in result.log
    assert rss["crawl_kb"] < PEAK_RSS_KB, (rss, elapsed)
    assert elapsed < TIMEOUT / 2, (rss, elapsed)
    # Refused after the limit, not read until the timeout.
    assert sent and max(sent.values()) < SENT_CAP // 100, sent


def test_the_other_images_are_stored(crawl):
    site, result, manifest, good, *_ = crawl
    for path, body in good.items():
        line = manifest[site.url(path)]
        assert line["status"] == "downloaded", line
        assert (result.store / line["path"]).read_bytes() == body


@pytest.mark.parametrize(("path", "what"), [("/endless.jpg", "Image"), ("/endless-page/", "Page")])
def test_endless_headers_fail_once_as_too_large(crawl, path, what):
    site, result, manifest, *_ = crawl
    url = site.url(path)
    lines = [line for line in result.log.splitlines() if url in line and " WARNING: " in line]
    assert len(lines) == 1, lines
    assert f" WARNING: {what} failed (too-large): {url}" in lines[0], lines
    assert lines[0].endswith(f": response headers over {64 * 1024} bytes"), lines
    assert "Traceback" not in result.log and " ERROR: " not in result.log
    assert site.hits[path] == 1  # not retried: the server would only do it again
    if what == "Image":
        assert manifest[url]["reason"] == "too-large"
