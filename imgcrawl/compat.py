"""Every private Scrapy or Twisted name imgcrawl relies on, and nowhere else.

Each has a public-API alternative only at a cost we measured or a behaviour we would lose;
the reason is given next to it. ``tests/test_compat.py`` checks that each still has the
shape used here and names the Scrapy/Twisted version when one does not. pyproject.toml
pins the Scrapy and Twisted releases these were checked against.
"""

from __future__ import annotations

import logging

from scrapy.core.downloader.handlers.http11 import (
    _LenientHTTP11ClientFactory,
    _LenientHTTP11ClientProtocol,
)
from scrapy.pipelines.media import _MediaRequestFiltered
from scrapy.statscollectors import MemoryStatsCollector
from twisted.internet.abstract import FileDescriptor

# -- media pipeline --------------------------------------------------------------------

# Raised from ``media_failed``, Scrapy's media pipeline logs nothing more for the image
# (any other exception gets an ERROR line with a traceback, after our one WARNING line).
MediaRequestFiltered = _MediaRequestFiltered


def set_media_result_cache(pipeline, cache) -> None:
    """Replace MediaPipeline's per-crawl result cache (``spiderinfo.downloaded``, a dict
    that otherwise grows by one entry per image for the whole crawl)."""
    pipeline.spiderinfo.downloaded = cache


# -- HTTP/1.1 download handler ---------------------------------------------------------


def send_now(transport) -> None:
    """Write what a TCP ``transport`` has buffered now, as far as the socket takes it.

    Twisted has no public flush: a write waits for the reactor's next poll. What the
    socket does not take, and any error, stays with the reactor, as it would have. Over
    TLS this does nothing: Twisted's TLS layer holds small writes for a reactor turn itself.
    """
    if isinstance(transport, FileDescriptor) and transport.connected and not transport.disconnecting:
        transport.doWrite()


class SendNowProtocol(_LenientHTTP11ClientProtocol):
    """Scrapy's lenient HTTP/1.1 client protocol; each request goes onto the socket at once."""

    def request(self, request):
        d = super().request(request)
        send_now(self.transport)
        return d


# -- log records of Scrapy's that imgcrawl reports itself, in one line ------------------

# The loggers of the Scrapy modules whose records these are (their module paths).
HTTP11_LOGGER = "scrapy.core.downloader.handlers.http11"
ROBOTSTXT_LOGGER = "scrapy.downloadermiddlewares.robotstxt"
# Scrapy's http11 handler warns with these for a body over DOWNLOAD_MAXSIZE and a cut-off
# body; the pipeline reports the same image with its reason.
MAXSIZE_TEXT = "download max size"
DATALOSS_PREFIX = "Got data loss"


def is_oversize_or_dataloss(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return MAXSIZE_TEXT in message or message.startswith(DATALOSS_PREFIX)


def robots_download_error(record: logging.LogRecord):
    """``(request, exception)`` when ``record`` is RobotsTxtMiddleware's "Error downloading"
    ERROR for a robots.txt it could not fetch, else None."""
    args = record.args if isinstance(record.args, dict) else {}
    if str(record.msg).startswith("Error downloading") and isinstance(args.get("f_exception"), Exception):
        return args["request"], args["f_exception"]
    return None


# -- the crawl command and the log's start and end ------------------------------------


def create_crawler(command, spider_name: str):
    """The crawler Scrapy's crawl ``command`` would build for ``spider_name``: with its
    warning for feeds (``-o``) that no enabled extension would write. Raises KeyError for an
    unknown spider, as ``CrawlerProcess.create_crawler`` does."""
    return command._create_crawler(spider_name)


# Scrapy's INFO records at a crawl's start and end that say how Scrapy is set up, not what
# the crawl does: its version table, component lists, overridden settings, the stats dump,
# and lines the summary repeats. Logger name -> the start of each record's message.
SCRAPY_DETAIL_RECORDS = {
    "scrapy.utils.log": ("Scrapy %(version)s started", "Versions:"),
    "scrapy.addons": ("Enabled addons:",),
    "scrapy.middleware": ("Enabled %(componentname)ss:",),
    "scrapy.crawler": ("Overridden settings:",),
    "scrapy.statscollectors": ("Dumping Scrapy stats:",),
    "scrapy.extensions.feedexport": ("Stored %s",),
    "scrapy.core.engine": ("Spider closed (%(reason)s)",),
}


def is_scrapy_detail(record: logging.LogRecord) -> bool:
    return str(record.msg).startswith(SCRAPY_DETAIL_RECORDS.get(record.name, ()))


# -- stats -----------------------------------------------------------------------------


class StatsCollector(MemoryStatsCollector):
    """Scrapy's in-memory stats (``STATS_CLASS``) without 2.19's ``__getattribute__``, which
    sends every attribute access, ``self._stats`` included, through a wrapper that warns
    about a ``spider`` argument: a cost paid several times per request. A ``spider``
    argument is still accepted, just not warned about."""

    __getattribute__ = object.__getattribute__


# -- bounds on what a server sends -----------------------------------------------------

import functools  # noqa: E402 - this section was appended; its imports stay with it

from scrapy.core.downloader.handlers.http11 import _LenientHTTPClientParser  # noqa: E402
from scrapy.downloadermiddlewares.httpcompression import HttpCompressionMiddleware  # noqa: E402
from scrapy.exceptions import IgnoreRequest  # noqa: E402
from scrapy.utils._compression import _DecompressionMaxSizeExceeded  # noqa: E402

from imgcrawl.failures import Failed  # noqa: E402

# What Scrapy's decompression raises past the limit (an IgnoreRequest from it is "caused" by this).
DecompressionMaxSizeExceeded = _DecompressionMaxSizeExceeded


class ResponseHeadTooLarge(Failed):
    """A response whose status line and headers ran past ``max_head`` bytes."""

    def __init__(self, max_head: int):
        super().__init__("too-large", f"response headers over {max_head} bytes")
        self.max_head = max_head

    def __reduce__(self):
        return type(self), (self.max_head,)


class DecompressedTooLarge(Failed, IgnoreRequest):
    """A body that decompresses past the download size limit: an IgnoreRequest to Scrapy
    (as its own), reported once, as ``too-large``, by whoever made the request."""

    def __init__(self, max_size: int, compressed: int):
        super().__init__("too-large", f"over {max_size} bytes once decompressed ({compressed} bytes compressed)")
        self.max_size, self.compressed = max_size, compressed

    def __reduce__(self):
        return type(self), (self.max_size, self.compressed)


class BodyWithoutRoom(Failed):
    """A 204 or 304 response followed by body bytes, which it may not have (reason
    ``bad-204`` / ``bad-304``): a server not to be trusted about that resource."""

    def __init__(self, status: int, extra: int):
        super().__init__(f"bad-{status}", f"{status} response followed by {extra} bytes of body, which it may not have")
        self.status, self.extra = status, extra

    def __reduce__(self):
        return type(self), (self.status, self.extra)


class HeadBoundParser(_LenientHTTPClientParser):
    """Scrapy's lenient response parser, counting the bytes of the status line and headers.

    Twisted's parser bounds each line (``LineReceiver.MAX_LENGTH``) but not how many there
    are: a server that never ends its headers grows them in memory until the download
    timeout. Past ``max_head`` bytes this raises, and Twisted's protocol then drops the
    connection and fails the request with a ``ResponseFailed`` carrying the exception.
    So does a 204 or 304 that brings a body along (:class:`BodyWithoutRoom`).
    """

    max_head = 0  # 0: no limit
    head_bytes = 0

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 - Twisted's name
        # Only the head arrives as lines: the body is read in raw mode.
        self.head_bytes += len(line) + 1
        if 0 < self.max_head < self.head_bytes:
            raise ResponseHeadTooLarge(self.max_head)
        super().lineReceived(line)

    def _finished(self, rest: bytes) -> None:
        # Twisted ends a 204/304 response at its head and drops the bytes that came with it
        # (``rest``): a body there would otherwise pass unnoticed, or be read as the start
        # of the next response on the connection. Raised here, the connection is dropped
        # and the request fails as for ResponseHeadTooLarge.
        if rest and self.response.code in self.NO_BODY_CODES and self.request.method != b"HEAD":
            raise BodyWithoutRoom(self.response.code, len(rest))
        super()._finished(rest)


class HeadBoundProtocol(SendNowProtocol):
    """:class:`SendNowProtocol` whose responses' heads may not exceed ``max_head`` bytes."""

    def __init__(self, quiescentCallback, max_head: int):  # noqa: N803 - Twisted's name
        super().__init__(quiescentCallback)
        self.max_head = max_head

    def request(self, request):
        d = super().request(request)
        # Scrapy swaps in its lenient parser the same way (HTTP11ClientProtocol.request
        # hardcodes the class); ours adds a count and a limit, both read in lineReceived.
        if self._parser is not None:
            self._parser.__class__ = HeadBoundParser
            self._parser.max_head = self.max_head
        return d


class HeadBoundFactory(_LenientHTTP11ClientFactory):
    def __init__(self, quiescentCallback, metadata, *, max_head: int):  # noqa: N803
        super().__init__(quiescentCallback, metadata)
        self.max_head = max_head

    def buildProtocol(self, addr):  # noqa: N802 - Twisted's name
        return HeadBoundProtocol(self._quiescentCallback, self.max_head)


def use_head_bound_protocol(handler, max_head: int) -> None:
    """Make an ``HTTP11DownloadHandler``'s connection pool build :class:`HeadBoundProtocol`.
    The pool has no public hook for its protocol; Scrapy sets its own factory this way."""
    handler._pool._factory = functools.partial(HeadBoundFactory, max_head=max_head)


class OneLineHttpCompression(HttpCompressionMiddleware):
    """Scrapy's HttpCompressionMiddleware (same encodings; the decompressed size limited by
    ``DOWNLOAD_MAXSIZE`` or the request's ``download_maxsize`` meta), except that a body
    decompressing past the limit raises :class:`DecompressedTooLarge`, where Scrapy logs a
    WARNING of its own and raises a bare IgnoreRequest (reported as ``filtered``). The
    private ``_handle_encoding`` is where Scrapy's limit is checked."""

    def _handle_encoding(self, body, content_encoding, max_size):
        try:
            return super()._handle_encoding(body, content_encoding, max_size)
        except _DecompressionMaxSizeExceeded as exc:
            # Its traceback's frames hold what was decompressed so far (up to the limit).
            exc.__traceback__ = None
            raise DecompressedTooLarge(exc.max_size, len(body)) from None


# -- the downloader's per-host limit under the asyncio reactor -------------------------

from scrapy.core.downloader import Downloader as ScrapyDownloader  # noqa: E402


class Downloader(ScrapyDownloader):
    """Scrapy's downloader (``DOWNLOADER``), with each request counted against its slot's
    concurrency as soon as it leaves the slot's queue.

    Scrapy counts a request as transferring in the first step of the coroutine that
    downloads it. Without the asyncio reactor that step runs at once; under it the
    coroutine is a task that runs later, so the loop handing out the slot's free places
    sees them all still free and starts every queued request: the per-host limit leaks
    (``CONCURRENT_REQUESTS_PER_DOMAIN`` = 2 let 7 requests to one host run at once, over one
    connection each). The private ``_wait_for_download(slot, request, queue_dfd)`` is the
    coroutine that loop schedules; ``Slot.transferring`` is the set its limit counts.
    """

    def _wait_for_download(self, slot, request, queue_dfd):
        slot.transferring.add(request)  # _download adds it again (a set) and removes it when done
        return super()._wait_for_download(slot, request, queue_dfd)
