"""Compressed bodies cannot blow up: a body over the limit once decompressed (an image or a
page) fails in one line as ``too-large`` (Scrapy logged its own warning, then it was
reported as ``filtered``)."""

from __future__ import annotations

import zlib
from io import BytesIO

import pytest
from PIL import Image

from conftest import LocalSite, run_crawl

MAXSIZE = 64 * 1024 * 1024  # imgcrawl's DOWNLOAD_MAXSIZE


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
