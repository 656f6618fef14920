"""Retries that wait: Scrapy's retry policy, with a pause before each retry.

Scrapy's RetryMiddleware retries at once; a server that is overloaded or rate-limiting us
gets the same request again within milliseconds. This middleware takes its place (settings.py
swaps them at 550) and decides *whether* to retry exactly as Scrapy does, through Scrapy's
public ``get_retry_request()`` (RETRY_* settings, ``max_retry_times``/``dont_retry`` meta,
``retry/*`` stats, the give-up log line), and only adds *when*.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.exceptions import NotConfigured
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.misc import load_object
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


class BackoffRetryMiddleware:
    """Retries what Scrapy's RetryMiddleware retries, but waits first: what ``Retry-After``
    asks (429/503), else ``IMGCRAWL_RETRY_BACKOFF`` doubled per attempt. A server asking for
    more than ``IMGCRAWL_RETRY_AFTER_MAX`` seconds is not retried (we neither hammer nor hang).

    Not a RetryMiddleware subclass: that class's own decision goes through a private method,
    and the policy here is the public ``get_retry_request()`` fed the same settings.
    """

    def __init__(self, crawler, *, retry_http_codes, exceptions_to_retry, max_retry_times,
                 priority_adjust, give_up_log_level, backoff, max_wait):
        self.crawler = crawler
        self.retry_http_codes = retry_http_codes
        self.exceptions_to_retry = exceptions_to_retry
        self.max_retry_times = max_retry_times
        self.priority_adjust = priority_adjust
        self.give_up_log_level = give_up_log_level
        self.backoff = backoff
        self.max_wait = max_wait

    @classmethod
    def from_crawler(cls, crawler):
        settings = crawler.settings
        if not settings.getbool("RETRY_ENABLED"):
            raise NotConfigured
        return cls(
            crawler,
            retry_http_codes={int(code) for code in settings.getlist("RETRY_HTTP_CODES")},
            # Import paths or the exception classes themselves, as Scrapy accepts both.
            exceptions_to_retry=tuple(load_object(e) for e in settings.getlist("RETRY_EXCEPTIONS")),
            max_retry_times=settings.getint("RETRY_TIMES"),
            priority_adjust=settings.getint("RETRY_PRIORITY_ADJUST"),
            give_up_log_level=settings["RETRY_GIVE_UP_LOG_LEVEL"],
            backoff=settings.getfloat("IMGCRAWL_RETRY_BACKOFF", 1.0),
            max_wait=settings.getfloat("IMGCRAWL_RETRY_AFTER_MAX", 60.0),
        )

    def delay(self, request, response=None) -> float | None:
        """Seconds to wait before retrying; None when the server asks for too long."""
        asked = retry_after(response.headers.get("Retry-After"), time.time()) if response else None
        if asked is not None:
            return asked if asked <= self.max_wait else None
        return self.backoff * 2 ** request.meta.get("retry_times", 0)

    def retry_request(self, request, reason):
        """The retry of ``request``, or None once it is out of retries. The per-request meta
        keys override the settings as they do for Scrapy's RetryMiddleware."""
        meta = request.meta
        return get_retry_request(
            request,
            spider=self.crawler.spider,
            reason=reason,
            max_retry_times=meta.get("max_retry_times", self.max_retry_times),
            priority_adjust=meta.get("priority_adjust", self.priority_adjust),
            give_up_log_level=meta.get("give_up_log_level", self.give_up_log_level),
        )

    async def retry_later(self, request, response, reason):
        wait = self.delay(request, response)
        # Too long a wait is neither a retry nor a give-up in the stats: the failure is
        # reported as what the server answered.
        retry = self.retry_request(request, reason) if wait is not None else None
        if retry is not None and wait:
            await sleep(wait)
        return retry

    async def process_response(self, request, response, spider=None):
        if request.meta.get("dont_retry", False) or response.status not in self.retry_http_codes:
            return response
        reason = response_status_message(response.status)
        return await self.retry_later(request, response, reason) or response

    async def process_exception(self, request, exception, spider=None):
        if request.meta.get("dont_retry", False) or not isinstance(exception, self.exceptions_to_retry):
            return None
        return await self.retry_later(request, None, exception)
