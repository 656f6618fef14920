"""The progress line, the end-of-crawl summary and their stats, from real crawls."""

from __future__ import annotations

import re
import time

import pytest
from scrapy import Request
from scrapy.http import Response
from scrapy.utils.test import get_crawler

from conftest import LocalSite, run_crawl
from imgcrawl.demo import build_gallery
from imgcrawl.logformatter import QuietLogFormatter

PROGRESS = re.compile(
    r"INFO: Progress: (\d+) pages, (\d+) images stored, (\d+) skipped, (\d+) failed \| "
    r"[\d.]+ images/s, [\d.]+ MB/s \| queue: \d+ pages, \d+ images(, ETA \d+:\d\d:\d\d)?$"
)


@pytest.fixture
def slow_site():
    """The demo gallery with every image delayed, so a crawl lasts long enough to report on."""
    files = build_gallery()

    def slow(path):
        content_type, body = files[path]

        def handler(request):
            time.sleep(0.1)
            request.send_response(200)
            request.send_header("Content-Type", content_type)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)

        return handler

    site = LocalSite(files, handlers={p: slow(p) for p in files if p.startswith("/img/")}).start()
    yield site
    site.stop()


def test_progress_lines_summary_and_stats(slow_site, tmp_path):
    url = slow_site.url("/gallery/")
    # 19 = the demo's 18 photos + its broken image: max_images is set, so an ETA is shown.
    result = run_crawl(
        tmp_path, "-a", f"url={url}", "-a", "max_images=19",
        settings={"IMGCRAWL_PROGRESS_INTERVAL": 0.2, "CONCURRENT_REQUESTS_PER_DOMAIN": 2},
    )
    assert result.returncode == 0, result.log[-3000:]
    lines = [m for m in map(PROGRESS.search, result.log.splitlines()) if m]
    assert lines, result.log[-3000:]
    counts = [tuple(int(m.group(i)) for i in range(1, 5)) for m in lines]
    # An ETA as soon as there is a rate to base it on (max_images is set).
    assert all(m.group(5) for m, c in zip(lines, counts) if sum(c[1:]) > 0)
    assert any(m.group(5) for m in lines), result.log[-3000:]
    assert counts == sorted(counts), "counters went backwards"
    # Summary: totals, each failure reason with an example URL, where things are.
    assert "Summary (finished): 18 images stored" in result.log
    assert "0 already stored, 1 failed" in result.log
    assert f"failed (undecodable): 1, e.g. {slow_site.url('/img/broken.jpg')}" in result.log
    assert f"originals: {result.store / 'full'}" in result.log
    assert f"manifest: {result.store / 'manifest.jsonl'}" in result.log
    assert "'imgcrawl/pages': 6" in result.log  # 3 listing pages + 3 detail pages
    assert re.search(r"'imgcrawl/images_per_second': [\d.]+", result.log)
    assert re.search(r"'imgcrawl/mb_per_second': [\d.]+", result.log)
    # imgcrawl.tuning is on in a real crawl: its stat is in the dump our collector made.
    assert re.search(r"'imgcrawl/gc_frozen_objects': \d{5,}", result.log)
    # Scrapy's own per-minute LogStats line is replaced by ours.
    assert "Crawled 0 pages (at" not in result.log

    # Again: everything is already stored, so it is counted as skipped, not stored.
    again = run_crawl(tmp_path, "-a", f"url={url}", settings={"IMGCRAWL_PROGRESS_INTERVAL": 0})
    assert "Summary (finished): 0 images stored (0.0 MB), 18 already stored, 1 failed" in again.log
    assert "Progress:" not in again.log  # interval 0: no line, still a summary

    # Quiet under -L WARNING: no progress line, no summary; the failure WARNING remains.
    quiet = run_crawl(
        tmp_path, "-a", f"url={url}", "-L", "WARNING", store=tmp_path / "quiet",
        settings={"IMGCRAWL_PROGRESS_INTERVAL": 0.1, "CONCURRENT_REQUESTS_PER_DOMAIN": 2},
    )
    assert quiet.returncode == 0, quiet.log[-3000:]
    assert "Progress:" not in quiet.log and "Summary" not in quiet.log
    assert "Image failed (undecodable)" in quiet.log
    assert len(list((tmp_path / "quiet" / "full").iterdir())) == 18


@pytest.mark.parametrize("level, shown", [("INFO", False), ("WARNING", False), ("DEBUG", True), (10, True)])
def test_per_response_and_per_item_lines_are_built_only_when_shown(level, shown):
    formatter = QuietLogFormatter.from_crawler(get_crawler(settings_dict={"LOG_LEVEL": level}))
    request = Request("http://127.0.0.1/img/a.jpg")
    response = Response(request.url, request=request)
    assert (formatter.crawled(request, response, None) is not None) is shown
    assert (formatter.scraped({"url": request.url}, response, None) is not None) is shown


def test_debug_crawl_still_logs_each_response_and_item(demo_site, tmp_path):
    result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}", "-s", "LOG_LEVEL=DEBUG")
    assert result.returncode == 0, result.log[-3000:]
    assert f"DEBUG: Crawled (200) <GET {demo_site.url('/gallery/')}>" in result.log
    assert result.log.count("DEBUG: Scraped from <200 ") == len(result.manifest())
