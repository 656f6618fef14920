"""Reactor-thread savings for crawls of many small requests, each switched on in settings.py."""

from __future__ import annotations

import gc

from scrapy import signals


class FreezeStartupObjects:
    """At spider open, moves every object alive (modules, classes, settings, components)
    out of the garbage collector's reach with :func:`gc.freeze`.

    A full collection scans every tracked object and stops the reactor while it does, and
    all connections sit idle meanwhile; most of what it scans was loaded at startup and
    lives for the whole crawl. Frozen objects are still freed by reference counting; only
    a reference cycle among them would now outlive the crawl.
    """

    def __init__(self, stats):
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler):
        extension = cls(crawler.stats)
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        return extension

    def spider_opened(self) -> None:
        gc.collect()  # startup's garbage is freed, not frozen
        gc.freeze()
        self.stats.set_value("imgcrawl/gc_frozen_objects", gc.get_freeze_count())
