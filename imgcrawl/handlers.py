"""imgcrawl's HTTP download handler: Scrapy's HTTP/1.1 handler, sending each request when it is made.

Twisted buffers every write until the reactor's next poll. Scrapy's downloader starts the next
request from inside the callbacks of the response that freed its connection, so without this
that request waits for the rest of the response's processing, and for every other event of the
same poll, before it goes out: on a latency-bound crawl of small images, a cost per request
that the connection sits idle for.
"""

from __future__ import annotations

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler

from imgcrawl import compat


class HTTPDownloadHandler(HTTP11DownloadHandler):
    """Scrapy's HTTP/1.1 handler (same pool, parser, TLS and proxies); requests go out at once."""

    def __init__(self, crawler):
        super().__init__(crawler)
        compat.use_send_now_protocol(self)
