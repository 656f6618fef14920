"""The reactor-thread savings keep Scrapy's behaviour (in-process, no crawl; the crawls in
test_progress run with both switched on)."""

from __future__ import annotations

import gc
import warnings

from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.test import get_crawler

from imgcrawl.compat import StatsCollector
from imgcrawl.tuning import FreezeStartupObjects


def exercise(stats) -> dict:
    stats.inc_value("n")
    stats.inc_value("n", 2)
    stats.max_value("max", 5)
    stats.max_value("max", 3)
    stats.min_value("min", 5)
    stats.min_value("min", 7)
    stats.set_value("s", "x")
    return dict(stats.get_stats())


def test_stats_count_like_scrapys_without_a_wrapper_per_method():
    crawler = get_crawler()
    ours, scrapys = StatsCollector(crawler), MemoryStatsCollector(crawler)
    assert exercise(ours) == exercise(scrapys) == {"n": 3, "max": 5, "min": 5, "s": "x"}
    # Scrapy's shim builds and caches a warning wrapper per stats method; ours calls them as-is.
    assert any(name.startswith("_cached_") for name in vars(scrapys))
    assert not any(name.startswith("_cached_") for name in vars(ours))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.inc_value("n", spider=None)  # still accepted (third-party code), no warning
    assert ours.get_value("n") == 4


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
