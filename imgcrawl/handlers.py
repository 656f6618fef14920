"""How responses come in: imgcrawl's HTTP download handler and its decompression middleware.

Twisted buffers every write until the reactor's next poll. Scrapy's downloader starts the next
request from inside the callbacks of the response that freed its connection, so without this
that request waits for the rest of the response's processing, and for every other event of the
same poll, before it goes out: on a latency-bound crawl of small images, a cost per request
that the connection sits idle for.

What a server sends is bounded: the body by ``DOWNLOAD_MAXSIZE`` (Scrapy's handler, while
streaming), the status line and headers by ``IMGCRAWL_MAX_HEADER_BYTES`` (Twisted bounds each
header line, not their number), and a compressed body by ``DOWNLOAD_MAXSIZE`` once
decompressed; an image's body also waits for room in the pipeline's in-flight byte budget
(``IMGCRAWL_MAX_INFLIGHT_BYTES``) before it is decompressed.
"""

from __future__ import annotations

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.exceptions import DownloadFailedError

from imgcrawl import compat

# Browsers accept up to a few hundred KiB of response headers; image servers and CDNs send
# a few KiB. Past this the response is refused (too-large) instead of grown until the timeout.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
# The request meta key under which the pipeline puts an image's share of its in-flight byte
# budget (imgcrawl.pipelines.HeldBytes): ``release()``, ``await room()``, ``hold(size, response)``.
INFLIGHT_META = "imgcrawl_inflight_bytes"


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
            head = next((r.value for r in reasons if isinstance(r.value, compat.ResponseHeadTooLarge)), None)
            if head is None:
                raise
            raise head from None


class HttpCompressionMiddleware(compat.OneLineHttpCompression):
    """Scrapy's decompression (``DOWNLOADER_MIDDLEWARES`` swaps it in at 590), with a body
    over the size limit once decompressed refused in one line (``too-large``), and an image's
    body counted against the pipeline's in-flight byte budget from here on.

    Decompression is where a small download becomes a large body, so a compressed image
    waits for room in the budget first; its share is then the decompressed size, which the
    pipeline releases when the image's worker is done. Pages are not counted: Scrapy holds
    a page until its callback is done, with no hook to release it at.
    """

    async def process_response(self, request, response):
        held = request.meta.get(INFLIGHT_META)
        if held is None:
            return super().process_response(request, response)
        # An earlier body of this image (an error page being retried) is gone.
        held.release()
        if request.method != "HEAD" and response.headers.get("Content-Encoding"):
            await held.room()
        response = super().process_response(request, response)
        held.hold(len(response.body), response)
        return response
