"""Compressed bodies cannot blow up memory: bytes in flight are bounded, not only images.

A page of images each a few tens of KB of gzip on the wire, just under DOWNLOAD_MAXSIZE once
decompressed, once took memory in proportion to their number (every image in flight was
decompressed at once; failed bodies stayed referenced from Scrapy's result cache). The crawl's peak RSS must stay small,
a normal image next to them is stored byte-exact, and a body over the limit once
decompressed (an image or a page) fails in one line as ``too-large``.
"""

from __future__ import annotations

import json
import sys
import zlib
from io import BytesIO

import pytest
from PIL import Image

from conftest import LocalSite, run_crawl
from test_bounds_headers import WATCH_RSS

MAXSIZE = 64 * 1024 * 1024  # imgcrawl's DOWNLOAD_MAXSIZE
BOMBS = 24
POOLS = ("thread", "process")
# The crawl process's peak: a baseline, the body the budget lets in (one at a time here, each
# over IMGCRAWL_MAX_INFLIGHT_BYTES) and the copies the worker pool makes or keeps a moment
# longer: with processes its pickle and Twisted's write buffer; with either, the previous
# body until the pool lets go of it. Without the budget, every body at once.
PEAK_RSS_KB = 360 * 1024


def gzipped(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    return compressor.compress(b"\0" * size) + compressor.flush()


def jpeg() -> bytes:
    buf = BytesIO()
    Image.new("RGB", (80, 60), (30, 160, 90)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def gzip_response(body: bytes, content_type: str):
    def respond(h):
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return respond


@pytest.fixture(scope="module", params=POOLS)
def crawl(request, tmp_path_factory):
    near = gzipped(MAXSIZE - 4 * 1024 * 1024)  # ~60 KB on the wire, 60 MiB decompressed
    good = jpeg()
    images = "".join(f'<img src="/bomb{i}.png">' for i in range(BOMBS))
    site = LocalSite({"/": ("text/html", f'<img src="/good.jpg">{images}'.encode()),
                      "/good.jpg": ("image/jpeg", good)})
    site.handlers.update({f"/bomb{i}.png": gzip_response(near, "image/png") for i in range(BOMBS)})
    site.start()
    tmp = tmp_path_factory.mktemp("bounds-memory")
    try:
        result = run_crawl(tmp, "-a", f"url={site.url('/')}", settings={"IMGCRAWL_WORKER_POOL": request.param},
                           wrapper=(sys.executable, "-c", WATCH_RSS, str(tmp / "rss.json")), timeout=120)
    finally:
        site.stop()
    rss = json.loads((tmp / "rss.json").read_text())
    rss["pool"] = request.param
    return site, result, {line["url"]: line for line in result.manifest()}, rss, good


def test_peak_memory_stays_bounded(crawl):
    _, result, _, rss, _ = crawl
    assert result.returncode == 0, result.log[-3000:]
    assert "'finish_reason': 'finished'" in result.log
    assert rss["crawl_kb"] < PEAK_RSS_KB, rss


def test_a_normal_image_next_to_them_is_stored_byte_exact(crawl):
    site, result, manifest, _, good = crawl
    line = manifest[site.url("/good.jpg")]
    assert line["status"] == "downloaded", line
    assert (result.store / line["path"]).read_bytes() == good


def test_every_decompressed_image_was_looked_at(crawl):
    site, _, manifest, _, _ = crawl
    for i in range(BOMBS):  # under the limit once decompressed: zeros, not an image
        assert manifest[site.url(f"/bomb{i}.png")]["reason"] == "not-an-image"


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    over = gzipped(MAXSIZE + 1024 * 1024)
    page = '<img src="/over.png"><img src="/good.jpg"><a rel="next" href="/page2/">next</a>'
    site = LocalSite({"/": ("text/html", page.encode()), "/good.jpg": ("image/jpeg", jpeg())})
    site.handlers["/over.png"] = gzip_response(over, "image/png")
    site.handlers["/page2/"] = gzip_response(over, "text/html")
    site.start()
    try:
        result = run_crawl(tmp_path_factory.mktemp("bombs"), "-a", f"url={site.url('/')}", timeout=120)
    finally:
        site.stop()
    return site, result, {line["url"]: line for line in result.manifest()}


@pytest.mark.parametrize(("path", "what"), [("/over.png", "Image"), ("/page2/", "Page")])
def test_over_the_limit_once_decompressed_is_one_line_too_large(bombs, path, what):
    site, result, manifest = bombs
    assert result.returncode == 0, result.log[-3000:]
    url = site.url(path)
    lines = [line for line in result.log.splitlines() if url in line and " WARNING: " in line]
    assert len(lines) == 1, lines
    assert f" WARNING: {what} failed (too-large): {url}" in lines[0], lines
    assert f"over {MAXSIZE} bytes once decompressed" in lines[0], lines
    assert "Traceback" not in result.log and " ERROR: " not in result.log
    assert "'imgcrawl/failed/too-large': 2" in result.log
    assert site.hits[path] == 1  # refused, not retried
    if what == "Image":
        assert manifest[url]["reason"] == "too-large"
        assert manifest[site.url("/good.jpg")]["status"] == "downloaded"


def test_scrapys_own_decompression_refusal_is_too_large_too():
    """A project that keeps Scrapy's HttpCompressionMiddleware gets the right reason."""
    from scrapy import Request
    from scrapy.downloadermiddlewares.httpcompression import HttpCompressionMiddleware
    from scrapy.exceptions import IgnoreRequest
    from scrapy.http import Response
    from scrapy.utils.test import get_crawler

    from imgcrawl.failures import failure_reason

    middleware = HttpCompressionMiddleware.from_crawler(get_crawler(settings_dict={"DOWNLOAD_MAXSIZE": 1000}))
    response = Response("https://x.example/a.png", body=gzipped(5000), headers={"Content-Encoding": "gzip"})
    with pytest.raises(IgnoreRequest) as caught:
        middleware.process_response(Request(response.url), response)
    assert failure_reason(caught.value) == "too-large"
