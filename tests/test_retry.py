"""The retry middleware keeps Scrapy's retry contract (per-request meta, stats, give-up log)
while it adds waiting; one real crawl of a spider that sets the meta keys itself."""

from __future__ import annotations

import re
import time

from conftest import LocalSite, run_crawl

# Each request names its own retry budget in meta, as a Scrapy user would.
SPIDER = '''
import scrapy


class RetryMeta(scrapy.Spider):
    name = "retrymeta"

    def __init__(self, base, **kwargs):
        super().__init__(**kwargs)
        self.base = base

    async def start(self):
        yield scrapy.Request(self.base + "/default")  # RETRY_TIMES
        yield scrapy.Request(self.base + "/three", meta={"max_retry_times": 3})
        yield scrapy.Request(self.base + "/none", meta={"max_retry_times": 0,
                                                        "give_up_log_level": "WARNING"})
        yield scrapy.Request(self.base + "/never", meta={"dont_retry": True})
        yield scrapy.Request(self.base + "/short", meta={"max_retry_times": 2}, errback=self.failed)

    def parse(self, response):
        pass

    def failed(self, failure):  # handled: no traceback in the log
        pass
'''
BACKOFF = 0.2


def stat(log: str, key: str) -> int | None:
    found = re.search(rf"'{re.escape(key)}': (\d+)", log)
    return int(found.group(1)) if found else None


def test_retry_meta_and_stats_follow_scrapy(tmp_path):
    times = []  # when /three was requested, to check the doubling backoff

    def error(h):
        if h.path == "/three":
            times.append(time.monotonic())
        h.send_response(500)
        h.send_header("Content-Length", "4")
        h.end_headers()
        h.wfile.write(b"oops")

    def short(h):  # claims more bytes than it sends, then closes: an exception, not a status
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        h.wfile.write(b"x" * 10)
        h.close_connection = True

    site = LocalSite({}, handlers={p: error for p in ("/default", "/three", "/none", "/never")})
    site.handlers["/short"] = short
    (tmp_path / "retryspider.py").write_text(SPIDER)  # importable: cwd is on sys.path
    site.start()
    try:
        result = run_crawl(tmp_path, "-a", f"base={site.url('')}", spider="retrymeta", timeout=60,
                           settings={"SPIDER_MODULES": "retryspider", "ROBOTSTXT_OBEY": False,
                                     "RETRY_TIMES": 1, "IMGCRAWL_RETRY_BACKOFF": BACKOFF})
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    assert "'finish_reason': 'finished'" in result.log, result.log[-3000:]
    assert "Traceback" not in result.log
    assert dict(site.hits) == {"/default": 2, "/three": 4, "/none": 1, "/never": 1, "/short": 3}
    # Scrapy's retry stats: 1 + 3 + 2 retries; given up on /default, /three, /none, /short.
    assert stat(result.log, "retry/count") == 6, result.log[-3000:]
    assert stat(result.log, "retry/reason_count/500 Internal Server Error") == 4
    assert stat(result.log, "retry/max_reached") == 4
    # Waits of BACKOFF, 2x, 4x before the retries (lower bounds only: a busy machine is slower).
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert all(gap >= 0.9 * BACKOFF * 2 ** n for n, gap in enumerate(gaps)), gaps
    # RETRY_GIVE_UP_LOG_LEVEL (DEBUG in settings.py) hides give-ups, but a request's own
    # give_up_log_level meta wins.
    gave_up = [line for line in result.log.splitlines() if "Gave up retrying" in line]
    assert len(gave_up) == 1 and "/none" in gave_up[0] and " WARNING: " in gave_up[0], gave_up
