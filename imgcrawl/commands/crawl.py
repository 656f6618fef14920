"""``scrapy crawl``: Scrapy's command, exiting with :mod:`imgcrawl.exitstatus`'s status.

Scrapy's own exits 0 for any crawl that started, whatever its close reason. Every way a
crawl is started from a shell goes through this command: ``scrapy crawl``, scrapyd's
runner and ``imgcrawl crawl``.
"""

from __future__ import annotations

from scrapy.commands.crawl import Command as ScrapyCrawlCommand
from scrapy.exceptions import UsageError

from imgcrawl import compat, exitstatus, logfilters


class Command(ScrapyCrawlCommand):
    def process_options(self, args, opts) -> None:
        super().process_options(args, opts)  # -s, -L and the rest are applied first
        if self.settings.getbool("IMGCRAWL_BRIEF_LOG"):
            # Before the crawler process exists: it logs Scrapy's version table when built.
            logfilters.brief_log()

    def run(self, args, opts) -> None:
        if len(args) != 1:
            super().run(args, opts)  # Scrapy's usage errors
            return
        try:
            crawler = compat.create_crawler(self, args[0])
        except KeyError as exc:  # Scrapy's "Spider not found" would be a traceback and exit 1
            names = ", ".join(sorted(self.crawler_process.spider_loader.list()))
            raise UsageError(f"{exc.args[0]}; the spiders are: {names}", print_help=False) from None
        self.crawler_process.crawl(crawler, **opts.spargs)
        self.crawler_process.start()
        if self.crawler_process.bootstrap_failed:
            self.exitcode = exitstatus.FAILED
        else:
            self.exitcode = exitstatus.exit_status(crawler.stats.get_stats())
