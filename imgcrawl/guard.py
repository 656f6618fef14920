"""The SSRF guard: a downloader middleware that refuses requests to non-public addresses.

A gallery on the open web can point an ``<img>`` (or a redirect) at ``127.0.0.1``, the LAN or
a cloud metadata address (``169.254.169.254``). By default every request, pages, images and
each redirect hop alike, is refused unless its host resolves to a public address, and it
fails closed:

- a name that does not resolve is refused (``dns``): let through, the downloader (or a proxy)
  would look it up again and could get another answer;
- a request a proxy would carry is refused (``proxy``) unless ``IMGCRAWL_ALLOW_PROXY = True``:
  the proxy looks names up and connects on its own, where the guard cannot see;
- while the crawl runs, every connection the downloader opens gets only addresses the guard
  allows, so a name that answers "public" to the guard and "private" to the downloader's own
  lookup (DNS rebinding) reaches nothing.

``IMGCRAWL_ALLOW_PRIVATE = True`` lifts the guard (the tests and the demo crawl 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from scrapy import signals
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.url import add_http_if_no_scheme
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from zope.interface import implementer

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


def proxy_of(request, env_proxies: dict[str, str]) -> str | None:
    """The proxy ``request`` will go through. HttpProxyMiddleware decides that after the guard
    has run, by this rule: ``meta["proxy"]`` when set (None: no proxy), else the environment's
    proxy for the URL's scheme, unless ``no_proxy`` names the host."""
    if "proxy" in request.meta:
        return request.meta["proxy"]
    parts = urlparse_cached(request)
    if parts.scheme in ("http", "https") and (not parts.hostname or proxy_bypass(parts.hostname)):
        return None
    return env_proxies.get(parts.scheme)


class PrivateAddressGuard:
    """Refuses requests whose host does not resolve, or resolves to a non-public address
    (checked per request, so each redirect hop is checked too, after DNS: a public name for
    10.0.0.1 is refused), and requests a proxy would carry unless proxies are allowed."""

    def __init__(self, crawler):
        settings = crawler.settings
        if settings.getbool("IMGCRAWL_ALLOW_PRIVATE"):
            raise NotConfigured  # no message: Scrapy would log it as a WARNING
        self.allow_proxy = settings.getbool("IMGCRAWL_ALLOW_PROXY")
        # Read as HttpProxyMiddleware reads them, so the guard knows what it will do.
        self.env_proxies = getproxies() if settings.getbool("HTTPPROXY_ENABLED") else {}
        self.proxy_hosts: set[str] = set()  # allowed proxies: connections to them are not checked
        self.resolver = None  # the reactor's own name resolver, once connections are checked
        # Once running: Scrapy installs its caching resolver just before it starts the reactor.
        _reactor().callWhenRunning(self.check_connections)
        crawler.signals.connect(self.stop_checking, signal=signals.engine_stopped)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def allowed(self, address: str) -> bool:
        """The policy; a subclass may allow, say, one internal mirror."""
        return is_public(address)

    async def resolve(self, host: str) -> list[str]:
        """Every address ``host`` resolves to, from the resolver the downloader uses (with
        Scrapy's DNS cache); [] when it does not resolve."""
        receiver = _Addresses()
        try:
            (self.resolver or _reactor().nameResolver).resolveHostName(receiver, host)
        except Exception:  # noqa: BLE001 - a name the resolver rejects outright (bad IDNA, ...)
            return []
        return await maybe_deferred_to_future(receiver.done)

    async def process_request(self, request, spider=None):
        host = (urlparse_cached(request).hostname or "").strip("[]")
        proxy = proxy_of(request, self.env_proxies)
        # Each refusal is reported (once) by whoever made the request: the pipeline or the
        # spider's errback.
        if proxy:
            if not self.allow_proxy:
                raise BlockedRequest("proxy", f"{request.url} would go through the proxy "
                                     f"{proxy}, which connects where the guard cannot check "
                                     "(set IMGCRAWL_ALLOW_PROXY=True to allow)")
            self.proxy_hosts.add(urlsplit(add_http_if_no_scheme(proxy)).hostname)
        await self.check_host(host, request.url)
        return None

    async def check_host(self, host: str, url: str) -> list[str]:
        """The addresses ``host`` (of ``url``) resolves to; :class:`BlockedRequest` unless
        there are some and the policy allows each. The rendering browser's connections are
        checked here too (:mod:`imgcrawl.browser`)."""
        if _is_ip(host):
            addresses = [host]
        else:
            addresses = await self.resolve(host) if host else []
        if not addresses:  # refused here, or the downloader or the proxy would ask again
            raise BlockedRequest("dns", f"{host or url} does not resolve, so the guard "
                                 "cannot check where it leads")
        for address in addresses:
            if not self.allowed(address):
                raise BlockedRequest("private-address", f"{host} is {address}, not a public "
                                     "address (set IMGCRAWL_ALLOW_PRIVATE=True to allow)")
        return addresses

    def check_connections(self):
        """Make every connection get only allowed addresses. Without this the downloader's
        own lookup may differ from the guard's when Scrapy's DNS cache is off or a crawl
        through many names evicted the guard's answer: a hostile DNS server then answers
        "public" to the guard and "private" to the downloader."""
        reactor = _reactor()
        self.resolver = reactor.nameResolver
        reactor.installNameResolver(_AllowedOnly(self.resolver, self))

    def stop_checking(self):
        """The next crawl in this process has its own settings (maybe no guard)."""
        reactor = _reactor()
        if getattr(reactor.nameResolver, "guard", None) is self:
            reactor.installNameResolver(self.resolver)


@implementer(IHostnameResolver)
class _AllowedOnly:
    """A name resolver passing on only the addresses the guard allows (proxies: all)."""

    def __init__(self, resolver, guard: PrivateAddressGuard):
        self.resolver, self.guard = resolver, guard

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,  # noqa: N802, N803
                        transportSemantics="TCP"):  # noqa: N803 - Twisted's interface
        if hostName not in self.guard.proxy_hosts:
            receiver = _Filtered(receiver, self.guard.allowed)
        return self.resolver.resolveHostName(receiver, hostName, portNumber, addressTypes,
                                             transportSemantics)


@implementer(IResolutionReceiver)
class _Filtered:
    """Hands on the allowed addresses; none left, and the connection fails as a DNS error."""

    def __init__(self, receiver, allowed):
        self.receiver, self.allowed = receiver, allowed

    def resolutionBegan(self, resolution):  # noqa: N802 - Twisted's interface
        self.receiver.resolutionBegan(resolution)

    def addressResolved(self, address):  # noqa: N802
        if self.allowed(address.host):
            self.receiver.addressResolved(address)

    def resolutionComplete(self):  # noqa: N802
        self.receiver.resolutionComplete()


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects a resolution's addresses; ``done`` fires with them."""

    def __init__(self):
        self.addresses: list[str] = []
        self.done = Deferred()

    def resolutionBegan(self, resolution):  # noqa: N802 - Twisted's interface
        pass

    def addressResolved(self, address):  # noqa: N802
        self.addresses.append(address.host)

    def resolutionComplete(self):  # noqa: N802
        self.done.callback(self.addresses)


def _reactor():
    from twisted.internet import reactor  # noqa: PLC0415 - the installed one, not a default

    return reactor


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
