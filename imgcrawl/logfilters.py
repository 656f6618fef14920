"""One line instead of Scrapy's two, or instead of its traceback: an extension a project
enables explicitly (``EXTENSIONS = {"imgcrawl.logfilters.OneLineLogs": 0}``).

* An image over ``DOWNLOAD_MAXSIZE`` or cut off mid-body: Scrapy's download handler warns,
  then the pipeline reports the same image with its reason. Scrapy's line is dropped (pages
  keep Scrapy's "Error downloading" line).
* A robots.txt that could not be fetched: Scrapy logs an ERROR with a traceback though the
  crawl goes on (the host then counts as allowing everything); one WARNING line says so.
* A rendered page that failed (``-a render=browser``): scrapy-playwright warns with a
  traceback as it closes the page; the spider reports the page in one line, so that is dropped.

The filters sit on Scrapy's loggers, which are process-wide: they are added when the
crawler is built and removed when its engine stops, so nothing outlives the crawl.

:func:`brief_log` (``IMGCRAWL_BRIEF_LOG``, called by the crawl command before Scrapy logs
anything) moves Scrapy's set-up records to DEBUG for the life of the process.
"""

from __future__ import annotations

import logging

from scrapy import signals
from scrapy.utils.httpobj import urlparse_cached

from imgcrawl import compat
from imgcrawl.failures import failure_reason


class ScrapyDetailsAtDebug(logging.Filter):
    """Scrapy's version table, component lists, overridden settings and stats dump as DEBUG
    records: shown with ``-L DEBUG``, not at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if compat.is_scrapy_detail(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def brief_log() -> None:
    """Put :class:`ScrapyDetailsAtDebug` on the loggers of those records, once per process."""
    for name in compat.SCRAPY_DETAIL_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ScrapyDetailsAtDebug) for f in logger.filters):
            logger.addFilter(ScrapyDetailsAtDebug())


class DropOversizeAndDataLoss(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not compat.is_oversize_or_dataloss(record)


class RobotsTxtOneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = compat.robots_download_error(record)
        if error is not None:
            request, exc = error
            record.msg = "robots.txt of %s not fetched (%s): its URLs are crawled as allowed"
            record.args = (urlparse_cached(request).netloc, failure_reason(exc))
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


# scrapy-playwright's logger, and the start of its warning for a page that failed.
PLAYWRIGHT_LOGGER = "scrapy-playwright"
PLAYWRIGHT_PAGE_FAILED = "Closing page due to failed request"


class DropRenderedPageFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(PLAYWRIGHT_PAGE_FAILED)


class OneLineLogs:
    """Adds the filters above to Scrapy's loggers for the life of one crawl."""

    def __init__(self):
        self.installed = [
            (logging.getLogger(compat.HTTP11_LOGGER), DropOversizeAndDataLoss()),
            (logging.getLogger(compat.ROBOTSTXT_LOGGER), RobotsTxtOneLine()),
            (logging.getLogger(PLAYWRIGHT_LOGGER), DropRenderedPageFailure()),
        ]
        for logger, one_line in self.installed:
            logger.addFilter(one_line)

    @classmethod
    def from_crawler(cls, crawler):
        extension = cls()
        crawler.signals.connect(extension.engine_stopped, signal=signals.engine_stopped)
        return extension

    def engine_stopped(self) -> None:
        for logger, one_line in self.installed:
            logger.removeFilter(one_line)
