"""Retries that wait: Scrapy's RetryMiddleware with a pause before each retry."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.response import response_status_message
from twisted.internet import task


def retry_after(value: bytes | None, now: float) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta or HTTP date), None if absent/bad."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - now)
    except (TypeError, ValueError):
        return None


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor  # noqa: PLC0415 - the installed reactor

    await maybe_deferred_to_future(task.deferLater(reactor, seconds, lambda: None))


class BackoffRetryMiddleware(RetryMiddleware):
    """Scrapy's RetryMiddleware, but waiting before each retry: what ``Retry-After`` asks
    (429/503), else ``IMGCRAWL_RETRY_BACKOFF`` doubled per attempt. A server asking for more
    than ``IMGCRAWL_RETRY_AFTER_MAX`` seconds is not retried (we neither hammer nor hang)."""

    def __init__(self, settings):
        super().__init__(settings)
        self.backoff = settings.getfloat("IMGCRAWL_RETRY_BACKOFF", 1.0)
        self.max_wait = settings.getfloat("IMGCRAWL_RETRY_AFTER_MAX", 60.0)

    def delay(self, request, response=None) -> float | None:
        asked = retry_after(response.headers.get("Retry-After"), time.time()) if response else None
        if asked is not None:
            return asked if asked <= self.max_wait else None
        return self.backoff * 2 ** request.meta.get("retry_times", 0)

    async def _retry_later(self, request, response, reason):
        wait = self.delay(request, response)
        retry = self._retry(request, reason) if wait is not None else None
        if retry is not None and wait:
            await sleep(wait)
        return retry

    async def process_response(self, request, response, spider=None):
        if request.meta.get("dont_retry", False) or response.status not in self.retry_http_codes:
            return response
        reason = response_status_message(response.status)
        return await self._retry_later(request, response, reason) or response

    async def process_exception(self, request, exception, spider=None):
        if request.meta.get("dont_retry", False) or not isinstance(exception, self.exceptions_to_retry):
            return None
        return await self._retry_later(request, None, exception)
