"""The pipeline alone changes nothing outside itself; the one-line log filters are an
extension a project enables, and they last only as long as its crawl."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, LocalSite
from imgcrawl.demo import build_gallery

# A project of its own: one spider, imgcrawl's pipeline, and only the extensions it names.
SCRIPT = r'''
import json, logging, sys
import scrapy
from scrapy.crawler import CrawlerProcess

site, store, extensions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
LOGGERS = ("scrapy.core.downloader.handlers.http11", "scrapy.downloadermiddlewares.robotstxt")

def filters():
    return [type(f).__name__ for name in LOGGERS for f in logging.getLogger(name).filters]

class OwnSpider(scrapy.Spider):
    name = "own"
    async def start(self):
        yield scrapy.Request(site + "/gallery/", callback=self.parse)
    def parse(self, response):
        yield {"image_urls": [site + "/img/photo001.jpg"], "page_url": response.url}
        yield {"image_urls": [site + "/img/big.jpg"], "page_url": response.url}

process = CrawlerProcess({
    "ITEM_PIPELINES": {"imgcrawl.pipelines.GalleryImagesPipeline": 1},
    "IMAGES_STORE": store, "IMGCRAWL_WORKER_POOL": "thread", "EXTENSIONS": extensions,
    "DOWNLOAD_MAXSIZE": 100_000, "LOG_LEVEL": "INFO",
    "TWISTED_REACTOR": "twisted.internet.epollreactor.EPollReactor",
})
crawler = process.create_crawler(OwnSpider)
seen = {}

def spider_opened():  # a named function: signal receivers are held by weak reference
    seen["during"] = filters()

crawler.signals.connect(spider_opened, signal=scrapy.signals.spider_opened)
process.crawl(crawler)
process.start()
print("FILTERS", json.dumps({"during": seen["during"], "after": filters()}))
'''


def own_project_crawl(tmp_path, extensions: dict) -> tuple[dict, str]:
    files = build_gallery()
    files["/img/big.jpg"] = ("image/jpeg", b"\xff\xd8\xff" + bytes(150_000))  # over DOWNLOAD_MAXSIZE
    script = tmp_path / "own_project.py"  # a file: Scrapy reads callbacks' source
    script.write_text(SCRIPT)
    site = LocalSite(files).start()
    try:
        out = subprocess.run(
            [sys.executable, str(script), site.url("").rstrip("/"), str(tmp_path / "store"), json.dumps(extensions)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        )
    finally:
        site.stop()
    line = next((x for x in out.stdout.splitlines() if x.startswith("FILTERS ")), None)
    assert line, out.stderr[-3000:]
    return json.loads(line.removeprefix("FILTERS ")), out.stderr


def test_the_pipeline_alone_installs_no_log_filter(tmp_path):
    filters, log = own_project_crawl(tmp_path, {})
    assert filters == {"during": [], "after": []}
    # Scrapy's own oversize warning is left alone; the pipeline adds its one line.
    assert "[scrapy.core.downloader.handlers.http11] WARNING" in log
    assert log.count("Image failed (too-large)") == 1


def test_one_line_logs_is_opt_in_and_ends_with_the_crawl(tmp_path):
    filters, log = own_project_crawl(tmp_path, {"imgcrawl.logfilters.OneLineLogs": 0})
    assert filters["during"] == ["DropOversizeAndDataLoss", "RobotsTxtOneLine"]
    assert filters["after"] == []  # removed when the engine stopped
    assert "[scrapy.core.downloader.handlers.http11] WARNING" not in log
    assert log.count("Image failed (too-large)") == 1
