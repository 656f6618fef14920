"""The reactor-thread savings keep Scrapy's behaviour (in-process, no crawl; the crawls in
test_progress run with them switched on). imgcrawl.compat.StatsCollector: tests/test_compat.py."""

from __future__ import annotations

import gc

from scrapy.utils.test import get_crawler

from imgcrawl.tuning import FreezeStartupObjects


def test_freeze_moves_startup_objects_out_of_the_collectors_reach():
    crawler = get_crawler()
    extension = FreezeStartupObjects.from_crawler(crawler)
    crawler.stats.open_spider()
    try:
        extension.spider_opened()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # this test process's modules, classes and functions
        assert crawler.stats.get_value("imgcrawl/gc_frozen_objects") == frozen
    finally:
        gc.unfreeze()
