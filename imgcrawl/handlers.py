"""How responses come in: imgcrawl's HTTP download handler.

Twisted buffers every write until the reactor's next poll. Scrapy's downloader starts the next
request from inside the callbacks of the response that freed its connection, so without this
that request waits for the rest of the response's processing, and for every other event of the
same poll, before it goes out: on a latency-bound crawl of small images, a cost per request
that the connection sits idle for.

What a server sends is bounded: the body by ``DOWNLOAD_MAXSIZE`` (Scrapy's handler, while
streaming), the status line and headers by ``IMGCRAWL_MAX_HEADER_BYTES`` (Twisted bounds each
header line, not their number), (a compressed body once decompressed:
:mod:`imgcrawl.inflight`). A 204 or 304 response with a body fails (``bad-304``).
"""

from __future__ import annotations

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.exceptions import DownloadFailedError

from imgcrawl import compat
from imgcrawl.failures import Failed

# Browsers accept up to a few hundred KiB of response headers; image servers and CDNs send
# a few KiB. Past this the response is refused (too-large) instead of grown until the timeout.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024


class HTTPDownloadHandler(HTTP11DownloadHandler):
    """Scrapy's HTTP/1.1 handler (same pool, parser, TLS and proxies); requests go out at
    once, and response headers are bounded."""

    def __init__(self, crawler):
        super().__init__(crawler)
        max_head = crawler.settings.getint("IMGCRAWL_MAX_HEADER_BYTES", DEFAULT_MAX_HEADER_BYTES)
        compat.use_head_bound_protocol(self, max_head)

    async def download_request(self, request):
        try:
            return await super().download_request(request)
        except DownloadFailedError as exc:
            # Scrapy wraps Twisted's ResponseFailed, whose reasons hold what the parser raised.
            reasons = getattr(exc.__cause__, "reasons", None) or ()
            refused = next((r.value for r in reasons if isinstance(r.value, Failed)), None)
            if refused is None:
                raise
            raise refused from None
