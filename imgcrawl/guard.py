"""The SSRF guard: a downloader middleware that refuses requests to non-public addresses.

A gallery on the open web can point an ``<img>`` (or a redirect) at ``127.0.0.1``, the LAN or
a cloud metadata address (``169.254.169.254``). By default every request, pages, images and
each redirect hop alike, is refused unless its host resolves to a public address.
``IMGCRAWL_ALLOW_PRIVATE = True`` lifts the guard (the tests and the demo crawl 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.defer import maybe_deferred_to_future

from imgcrawl.failures import Failed


class BlockedRequest(Failed, IgnoreRequest):
    """A request refused on purpose: an IgnoreRequest to Scrapy, with its reason."""


# IPv6 forms that only wrap an IPv4 address: packets to them end up at that address
# (IPv4-compatible, SIIT, NAT64 well-known prefix; IPv4-mapped and 6to4 are found by
# ipaddress itself). Python calls them global whatever the address inside.
_WRAPS_IPV4 = [ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")]
# Never public, whatever they carry: local-use NAT64 (translates into the operator's own
# network), site-local (deprecated, still routed as private), Teredo (reached through a
# relay and a tunnel to a client behind NAT; Python already calls it not global).
_NEVER_PUBLIC = [ipaddress.ip_network(n) for n in ("64:ff9b:1::/48", "fec0::/10", "2001::/32")]


def is_public(address: str) -> bool:
    """True for a globally routable unicast address (not loopback/private/link-local/...);
    an IPv6 address that wraps an IPv4 address is judged by the IPv4 address inside."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _NEVER_PUBLIC):
            return False
        if any(ip in net for net in _WRAPS_IPV4):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
        else:
            ip = ip.ipv4_mapped or ip.sixtofour or ip
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
