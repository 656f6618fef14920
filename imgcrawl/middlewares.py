"""Downloader middlewares: the SSRF guard and retries that back off.

A gallery on the open web can point an ``<img>`` (or a redirect) at ``127.0.0.1``, the LAN or
a cloud metadata address (``169.254.169.254``). By default every request, pages, images and
each redirect hop alike, is refused unless its host resolves to a public address.
``IMGCRAWL_ALLOW_PRIVATE = True`` lifts the guard (the tests and the demo crawl 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.response import response_status_message
from twisted.internet import task

from imgcrawl.failures import Failed


class BlockedRequest(Failed, IgnoreRequest):
    """A request refused on purpose: an IgnoreRequest to Scrapy, with its reason."""


def is_public(address: str) -> bool:
    """True for a globally routable unicast address (not loopback/private/link-local/...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PrivateAddressGuard:
    """Refuses requests whose host resolves to a non-public address (checked per request,
    so each redirect hop is checked too, after DNS: a public name for 10.0.0.1 is refused)."""

    def __init__(self, crawler):
        if crawler.settings.getbool("IMGCRAWL_ALLOW_PRIVATE"):
            raise NotConfigured  # no message: Scrapy would log it as a WARNING
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def allowed(self, address: str) -> bool:
        """The policy; a subclass may allow, say, one internal mirror."""
        return is_public(address)

    async def resolve(self, host: str) -> str:
        """The address the downloader will connect to (through Scrapy's DNS cache)."""
        from twisted.internet import reactor  # noqa: PLC0415 - the installed reactor

        return await maybe_deferred_to_future(reactor.resolve(host))

    async def process_request(self, request, spider=None):
        host = (urlsplit(request.url).hostname or "").strip("[]")
        try:
            address = host if _is_ip(host) else await self.resolve(host)
        except Exception:  # noqa: BLE001 - unresolvable: let the downloader report "dns"
            return None
        if self.allowed(address):
            return None
        # Reported (once) by whoever made the request: the pipeline or the spider's errback.
        raise BlockedRequest("private-address", f"{host} is {address}, not a public address "
                             "(set IMGCRAWL_ALLOW_PRIVATE=True to allow)")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


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
