"""The exit status of a crawl, from its stats: what cron jobs and scrapyd users test.

``scrapy crawl`` (imgcrawl's, :mod:`imgcrawl.commands.crawl`), ``imgcrawl crawl`` and
``imgcrawl demo`` exit with it; the summary names it when it is not 0. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

OK = 0  # the crawl finished; single images or pages that failed are reported, not fatal
FAILED = 1  # the crawl did not finish: interrupted, or stopped by an unexpected error
USAGE = 2  # bad command line: a bad option, -a argument, setting or spider name (argparse's status)
NOTHING_CRAWLED = 3  # no page could be fetched: each one tried was refused, unreachable or an HTTP error
STORE_FAILED = 4  # IMAGES_STORE (or the manifest) is not writable, is full or does not answer

MEANINGS = {
    OK: "the crawl finished",
    FAILED: "the crawl did not finish (interrupted, or an unexpected error: see the log)",
    USAGE: "bad usage, a bad argument or a bad setting (see the ERROR line)",
    NOTHING_CRAWLED: "nothing crawled: no page could be fetched (every start URL was refused, unreachable or an HTTP error)",
    STORE_FAILED: "the image store is not writable, is full or does not answer (see the ERROR line)",
}

# Close reasons of a crawl that ended as it was told to: at its end, or at a limit it was given.
FINISHED_REASONS = frozenset({
    "finished",
    "imgcrawl_max_images", "imgcrawl_max_bytes",
    "closespider_timeout", "closespider_timeout_no_item", "closespider_itemcount", "closespider_pagecount",
})
USAGE_REASONS = frozenset({"bad_argument", "bad_setting"})
STORE_REASONS = frozenset({"disk_full", "store_not_writable", "store_unreachable"})
# Set by the Progress extension at close: pages fetched (2xx), whatever they held.
PAGES_STAT = "imgcrawl/pages"
FAILED_PREFIX = "imgcrawl/failed/"  # a count per reason, of pages and images given up on


def exit_status(stats: Mapping) -> int:
    """The status of a crawl whose stats are ``stats`` (a crawl that never started has no
    ``finish_reason``: FAILED)."""
    reason = stats.get("finish_reason")
    if reason in USAGE_REASONS:
        return USAGE
    if reason in STORE_REASONS:
        return STORE_FAILED
    if reason not in FINISHED_REASONS:
        return FAILED
    # Pages were tried and none could be fetched. A distributed worker that found nothing
    # left to do tried none; without the extension that counts pages there is no count.
    if stats.get(PAGES_STAT) == 0 and any(k.startswith(FAILED_PREFIX) and v for k, v in stats.items()):
        return NOTHING_CRAWLED
    return OK
