"""A log formatter that does not build the per-response and per-item lines nobody will see.

Scrapy builds its "Crawled (200) <GET …>" and "Scraped from …" records (DEBUG) for every
request and item, and only the log handler drops them: at INFO, a cost paid per request and
per item for lines nobody sees.
"""

from __future__ import annotations

import logging

from scrapy.logformatter import LogFormatter


def logs_at(settings, level: int) -> bool:
    """Whether the crawl's log (``LOG_ENABLED``, ``LOG_LEVEL``) shows records of ``level``."""
    threshold = settings.get("LOG_LEVEL")
    if isinstance(threshold, str):
        threshold = logging.getLevelName(threshold.upper())  # "DEBUG" -> 10; an unknown name stays a str
    return settings.getbool("LOG_ENABLED") and isinstance(threshold, int) and threshold <= level


class QuietLogFormatter(LogFormatter):
    """Scrapy's formatter; its two DEBUG lines are skipped (None) unless LOG_LEVEL shows them."""

    def __init__(self, debug: bool = True):
        self.debug = debug

    @classmethod
    def from_crawler(cls, crawler):
        return cls(logs_at(crawler.settings, logging.DEBUG))

    def crawled(self, request, response, spider):
        return super().crawled(request, response, spider) if self.debug else None

    def scraped(self, item, response, spider):
        return super().scraped(item, response, spider) if self.debug else None
