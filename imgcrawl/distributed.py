"""One switch for distributed crawling: ``-s IMGCRAWL_REDIS_URL=redis://host:6379/0``.

With it set, :class:`RedisAddon` swaps in scrapy-redis's shared scheduler and dupefilter
(every worker pulls pages from one Redis frontier, each page is fetched once by one
worker), the pipeline uses the Redis-backed "already stored" index, and
:class:`RedisStartUrls` feeds start URLs pushed to the Redis list ``<spider>:start_urls``
to idle workers. Without it, nothing here is active and scrapy-redis need not be installed.
"""

from __future__ import annotations

import logging
import time
import warnings

from scrapy import signals
from scrapy.exceptions import DontCloseSpider, NotConfigured, ScrapyDeprecationWarning

from imgcrawl.links import is_absolute_http

logger = logging.getLogger(__name__)

START_URLS_KEY = "%(name)s:start_urls"
# Seconds a worker with nothing to do waits for other workers' pages or new start URLs.
DEFAULT_IDLE_CLOSE = 30


def redis_url(settings) -> str | None:
    return settings.get("IMGCRAWL_REDIS_URL") or None


class RedisAddon:
    """Scrapy add-on: turns IMGCRAWL_REDIS_URL into scrapy-redis settings (-s still wins)."""

    def update_settings(self, settings) -> None:
        url = redis_url(settings)
        if not url:
            return
        for name, value in (
            ("REDIS_URL", url),
            ("SCHEDULER", "imgcrawl.redis_scheduler.SharedScheduler"),
            ("DUPEFILTER_CLASS", "scrapy_redis.dupefilter.RFPDupeFilter"),
            # Keep the frontier and seen-set when a worker stops: the first worker to drain
            # must not wipe the dupefilter under the others, and a killed worker's pending
            # pages stay queued for the others or for a restart.
            ("SCHEDULER_PERSIST", True),
        ):
            settings.set(name, value, priority="addon")
        # scrapy-redis 0.9.1 passes spider= to the stats collector; not ours to fix, and
        # a WARNING per crawl would read as a problem with the crawl.
        warnings.filterwarnings("ignore", category=ScrapyDeprecationWarning, module=r"scrapy_redis\.")
        settings.setdefault_in_component_priority_dict("EXTENSIONS", RedisStartUrls, 0)


class RedisStartUrls:
    """Idle workers take start URLs from Redis and wait, boundedly, for shared work.

    scrapy-redis's ``RedisSpider`` feeds its list through ``start_requests()``, which
    Scrapy 2.19 never calls, and on ``spider_idle``. This does both on ``spider_idle``
    (which fires as soon as ``start()`` is exhausted), using the gallery spider's
    ``page_request``, so ``start()`` itself stays as it is.
    """

    def __init__(self, crawler, server, idle_close: float):
        self.crawler = crawler
        self.server = server
        self.idle_close = idle_close
        self.batch = crawler.settings.getint("CONCURRENT_REQUESTS")
        self.idle_since: float | None = None
        self.key = ""
        self.seen_key = ""  # the shared dupefilter's: it exists once any worker queued a page
        self.begun = False
        self.said_waiting = False

    @classmethod
    def from_crawler(cls, crawler):
        if not redis_url(crawler.settings):
            raise NotConfigured
        from scrapy_redis import connection  # only needed when distributed

        idle_close = crawler.settings.getfloat("IMGCRAWL_REDIS_IDLE_CLOSE", DEFAULT_IDLE_CLOSE)
        ext = cls(crawler, connection.from_settings(crawler.settings), idle_close)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_idle, signal=signals.spider_idle)
        crawler.signals.connect(ext.response_received, signal=signals.response_received)
        return ext

    def spider_opened(self, spider) -> None:
        from scrapy_redis import defaults  # only needed when distributed

        self.key = START_URLS_KEY % {"name": spider.name}
        self.seen_key = self.crawler.settings.get(
            "SCHEDULER_DUPEFILTER_KEY", defaults.SCHEDULER_DUPEFILTER_KEY) % {"spider": spider.name}
        logger.info("Distributed crawl: shared frontier in Redis; start URLs also from list %r", self.key)

    def pop_start_urls(self) -> list[str]:
        urls = self.server.lpop(self.key, self.batch) or []
        return [u.decode() if isinstance(u, bytes) else u for u in urls]

    def crawl_begun(self) -> bool:
        """Has any worker queued a page yet (the shared seen-pages set exists)?"""
        if not self.begun:
            self.begun = bool(self.server.exists(self.seen_key))
            if not self.begun and not self.said_waiting:
                self.said_waiting = True
                logger.info("Waiting for the crawl to begin: no page queued in Redis yet; push a start URL "
                            "to list %r", self.key)
        return self.begun

    def response_received(self) -> None:
        self.idle_since = None

    def spider_idle(self, spider) -> None:
        urls = self.pop_start_urls()
        for url in urls:
            if not is_absolute_http(url):
                logger.warning("Start URL %r from Redis list %r ignored: need an absolute http(s) URL",
                               url, self.key)
                self.crawler.stats.inc_value("imgcrawl/failed/bad-start-url")
                continue
            # The gallery spider's page request: bounded by max_pages, deduplicated.
            request = spider.page_request(url)
            if request is not None:
                self.crawler.engine.crawl(request)
        if urls:
            raise DontCloseSpider
        if not self.crawl_begun():
            # Started before any start URL was pushed: its countdown would run out while the
            # others start (a second process then idles out before the first page exists).
            raise DontCloseSpider
        # Other workers may still be adding pages to the shared frontier; the engine
        # checks it again on each heartbeat while we keep the spider open.
        self.idle_since = self.idle_since or time.monotonic()
        if time.monotonic() - self.idle_since < self.idle_close:
            raise DontCloseSpider
