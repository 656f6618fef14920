"""The shared frontier's scheduler (``SCHEDULER`` when ``IMGCRAWL_REDIS_URL`` is set; this
module needs scrapy-redis, so only distributed crawls import it)."""

from __future__ import annotations

from scrapy_redis.scheduler import Scheduler


class SharedScheduler(Scheduler):
    """scrapy-redis's scheduler, taking from the shared frontier only pages this process can
    start soon: at most ``IMGCRAWL_REDIS_PAGES_AHEAD`` (default: the connections per host)
    taken and not yet downloaded; ``0`` for no limit. Scrapy asks for the next page whenever
    its downloader has room (``CONCURRENT_REQUESTS``), so without it the first process moves
    a small crawl's whole frontier into its own queue while the others idle."""

    @classmethod
    def from_crawler(cls, crawler):
        scheduler = super().from_crawler(crawler)
        scheduler.crawler = crawler
        settings = crawler.settings
        scheduler.pages_ahead = settings.getint(
            "IMGCRAWL_REDIS_PAGES_AHEAD", settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN"))
        scheduler.taken = []
        return scheduler

    def next_request(self):
        # Scrapy's downloader holds a request from fetch(), which the engine calls before it
        # asks for the next one, until its answer or failure.
        active = self.crawler.engine.downloader.active
        self.taken = [request for request in self.taken if request in active]
        if self.pages_ahead > 0 and len(self.taken) >= self.pages_ahead:
            return None
        request = super().next_request()
        if request is not None:
            self.taken.append(request)
        return request
