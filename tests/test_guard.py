"""The SSRF guard fails closed: on DNS failures, behind a proxy, on DNS rebinding, and on
IPv6 forms that carry an IPv4 address.

The crawls run for real (``scrapy crawl`` in a subprocess, the guard on) against a hostile DNS
server stand-in the test controls: Scrapy's own caching resolver (``TWISTED_DNS_RESOLVER``)
over a table of answers, one per query, which logs every query that reaches it, as a DNS
server's query log would. Sites and the proxy listen on 127.0.0.1 at free ports.
"""

from __future__ import annotations

import json
from io import BytesIO

import pytest
from PIL import Image
from scrapy import Request

from conftest import LocalSite, run_crawl
from imgcrawl import exitstatus
from imgcrawl import settings as defaults
from imgcrawl.guard import is_public, proxy_of

# -- is_public: IPv6 forms that carry an IPv4 address --------------------------------------

PRIVATE_INNER, PUBLIC_INNER = "127.0.0.1", "93.184.216.34"  # 7f00:1, 5db8:d822


@pytest.mark.parametrize(("form", "address_of"), [
    ("IPv4-mapped", "::ffff:{}".format),
    ("IPv4-compatible", "::{}".format),
    ("SIIT", "::ffff:0:{}".format),
    ("NAT64 well-known prefix", "64:ff9b::{}".format),
    ("6to4", lambda v4: "2002:{:02x}{:02x}:{:02x}{:02x}::1".format(*map(int, v4.split(".")))),
])
@pytest.mark.parametrize("inner", [PRIVATE_INNER, "10.1.2.3", "169.254.169.254", "100.64.0.1",
                                   "0.0.0.0", "224.0.0.1", PUBLIC_INNER])
def test_an_ipv6_address_carrying_an_ipv4_one_is_judged_by_it(form, address_of, inner):
    assert is_public(address_of(inner)) is (inner == PUBLIC_INNER)


def teredo(server: str, client: str) -> str:
    """2001:0:<server>:<flags>:<port ^ ffff>:<client ^ ffffffff> (RFC 4380)."""
    s = [int(x) for x in server.split(".")]
    c = [int(x) ^ 0xFF for x in client.split(".")]
    return f"2001:0:{s[0]:02x}{s[1]:02x}:{s[2]:02x}{s[3]:02x}:8000:63bf:{c[0]:02x}{c[1]:02x}:{c[2]:02x}{c[3]:02x}"


@pytest.mark.parametrize("address", [
    "64:ff9b:1::a00:1", "64:ff9b:1::5db8:d822",  # local-use NAT64: the operator's own network
    "fec0::1", "fec0::5db8:d822",  # site-local
    teredo(PUBLIC_INNER, PRIVATE_INNER), teredo(PRIVATE_INNER, PUBLIC_INNER),
    teredo(PUBLIC_INNER, "10.0.0.1"), teredo(PUBLIC_INNER, PUBLIC_INNER),
])
def test_never_public_whatever_they_carry(address):
    assert is_public(address) is False


@pytest.mark.parametrize("address", [
    "2606:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001:80b::200e", "2002:5db8:d822::1",
    "64:ff9b::5db8:d822", "::ffff:93.184.216.34",
])
def test_plain_public_ipv6_stays_public(address):
    assert is_public(address) is True


def test_teredo_helper_builds_what_ipaddress_reads():
    import ipaddress

    server, client = ipaddress.ip_address(teredo(PUBLIC_INNER, "10.0.0.1")).teredo
    assert (str(server), str(client)) == (PUBLIC_INNER, "10.0.0.1")


# -- which proxy a request will use (HttpProxyMiddleware's rule, ahead of it) -----------------

@pytest.mark.parametrize(("url", "meta", "expected"), [
    ("http://gallery.test/", {}, "http://127.0.0.1:3128"),
    ("https://gallery.test/", {}, None),  # no https_proxy in this environment
    ("http://skip.test/", {}, None),  # no_proxy names it
    ("http://gallery.test/", {"proxy": "http://other:8080"}, "http://other:8080"),
    ("http://gallery.test/", {"proxy": None}, None),  # explicitly no proxy
    ("https://gallery.test/", {"proxy": "http://other:8080"}, "http://other:8080"),
])
def test_proxy_of(monkeypatch, url, meta, expected):
    monkeypatch.setenv("no_proxy", "skip.test")
    env_proxies = {"http": "http://127.0.0.1:3128"}
    assert proxy_of(Request(url, meta=meta), env_proxies) == expected


# -- real crawls against a hostile DNS server ---------------------------------------------

HOSTILE_DNS = '''
"""A hostile DNS server stand-in, under Scrapy's own DNS cache."""
import json

from scrapy.resolver import CachingThreadedResolver
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress
from twisted.internet.base import ThreadedResolver
from twisted.internet.error import DNSLookupError

from imgcrawl.guard import PrivateAddressGuard


class _Table(ThreadedResolver):
    """Answers from GUARDTEST_DNS ({name: [answer, ...]}: one answer per query, the last one
    repeated; null: the query fails; no entry: NXDOMAIN) and appends each name asked to
    GUARDTEST_DNS_LOG."""

    def getHostByName(self, name, timeout=()):
        if isIPAddress(name):
            return defer.succeed(name)
        with open(self.log, "a") as log:
            log.write(name + "\\n")
        answers = self.answers.get(name) or [None]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return defer.fail(DNSLookupError(name)) if answer is None else defer.succeed(answer)


class HostileResolver(CachingThreadedResolver, _Table):  # the cache asks _Table on a miss
    @classmethod
    def from_crawler(cls, crawler, reactor):
        resolver = super().from_crawler(crawler, reactor)
        resolver.answers = json.loads(crawler.settings["GUARDTEST_DNS"])
        resolver.log = crawler.settings["GUARDTEST_DNS_LOG"]
        return resolver


class TwoIsPublic(PrivateAddressGuard):
    """127.0.0.2 stands in for a public address (nothing listens there)."""

    def allowed(self, address):
        return address == "127.0.0.2" or super().allowed(address)
'''


def jpeg() -> bytes:
    buf = BytesIO()
    Image.new("RGB", (40, 30), (200, 60, 120)).save(buf, "JPEG")
    return buf.getvalue()


def hostile_crawl(tmp_path, url, answers, **settings):
    """A crawl of ``url`` with the guard on and DNS answered from ``answers``; the result and
    the names the DNS server was asked, in order."""
    (tmp_path / "hostiledns.py").write_text(HOSTILE_DNS)  # importable: cwd is on sys.path
    log = tmp_path / "dns-queries.log"
    result = run_crawl(tmp_path, "-a", f"url={url}", settings={
        "IMGCRAWL_ALLOW_PRIVATE": False, "TWISTED_DNS_RESOLVER": "hostiledns.HostileResolver",
        "GUARDTEST_DNS": json.dumps(answers), "GUARDTEST_DNS_LOG": str(log),
        "IMGCRAWL_WORKER_POOL": "thread", "DOWNLOAD_TIMEOUT": 5, **settings,
    }, timeout=120)
    return result, log.read_text().split() if log.exists() else []


def warnings(log: str, reason: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING: " in line and f"({reason})" in line]


def test_a_name_that_fails_once_is_refused_not_looked_up_again(tmp_path):
    site = LocalSite({"/": ("text/html", b'<img src="/a.jpg">'), "/a.jpg": ("image/jpeg", jpeg())}).start()
    start = f"http://flaky.test:{site.port}/"
    try:
        # The first query fails; every later one would answer loopback.
        result, queries = hostile_crawl(tmp_path, start, {"flaky.test": [None, "127.0.0.1"]})
    finally:
        site.stop()
    assert result.returncode == exitstatus.NOTHING_CRAWLED, result.log[-3000:]  # the start URL was refused
    assert sum(site.hits.values()) == 0  # not even robots.txt
    assert queries == ["flaky.test"]  # the guard's query only: nobody asked again
    refused = warnings(result.log, "dns")
    assert len(refused) == 1 and start in refused[0], result.log[-3000:]
    assert "flaky.test does not resolve" in refused[0]
    assert "'imgcrawl/failed/dns': 1" in result.log
    assert "private-address" not in result.log and "Traceback" not in result.log


def test_a_name_rebound_after_the_guards_check_connects_nowhere(tmp_path):
    # "Public" (127.0.0.2) to the guard, loopback to the downloader's own query: Scrapy's DNS
    # cache is off, so the downloader asks again. The site on 127.0.0.1 is the intranet.
    site = LocalSite({"/": ("text/html", b"secret")}).start()
    start = f"http://rebind.test:{site.port}/"
    middlewares = {**defaults.DOWNLOADER_MIDDLEWARES, "imgcrawl.guard.PrivateAddressGuard": None,
                   "hostiledns.TwoIsPublic": 60}
    try:
        result, queries = hostile_crawl(
            tmp_path, start, {"rebind.test": ["127.0.0.2", "127.0.0.1"]},
            DNSCACHE_ENABLED=False, ROBOTSTXT_OBEY=False, RETRY_TIMES=0,
            DOWNLOADER_MIDDLEWARES=json.dumps(middlewares),
        )
    finally:
        site.stop()
    assert result.returncode == exitstatus.NOTHING_CRAWLED, result.log[-3000:]  # the start URL was refused
    assert queries == ["rebind.test", "rebind.test"]  # the guard's, then the downloader's
    assert sum(site.hits.values()) == 0 and site.connections == 0
    refused = warnings(result.log, "dns")
    assert len(refused) == 1 and start in refused[0], result.log[-3000:]
    assert "Traceback" not in result.log


@pytest.fixture
def behind_proxy(monkeypatch):
    """An HTTP proxy on 127.0.0.1 that reaches the gallery and the intranet (it answers for
    gallery.test, intranet.invalid and metadata.test itself), set in this process's
    environment, so in the crawl's. ``hits`` holds every URL it was asked for."""
    page = (b'<img src="/a.jpg"><img src="http://intranet.invalid/secret.jpg">'
            b'<img src="http://metadata.test/latest.jpg">')
    proxy = LocalSite({"http://gallery.test/": ("text/html", page),
                       "http://gallery.test/a.jpg": ("image/jpeg", jpeg()),
                       "http://intranet.invalid/secret.jpg": ("image/jpeg", jpeg()),
                       "http://metadata.test/latest.jpg": ("image/jpeg", jpeg())}).start()
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url(""))
    yield proxy
    proxy.stop()


# What our own DNS says: the gallery is public (never connected to: the proxy is), the
# metadata name is link-local, intranet.invalid does not resolve (only the proxy knows it).
PROXY_DNS = {"gallery.test": ["93.184.216.34"], "metadata.test": ["169.254.169.254"]}


def test_a_proxy_is_refused_by_default(tmp_path, behind_proxy):
    proxy = behind_proxy
    result, _ = hostile_crawl(tmp_path, "http://gallery.test/", PROXY_DNS)
    assert result.returncode == exitstatus.NOTHING_CRAWLED, result.log[-3000:]  # the start URL was refused
    assert sum(proxy.hits.values()) == 0 and proxy.connections == 0
    refused = warnings(result.log, "proxy")
    assert len(refused) == 1 and "http://gallery.test/" in refused[0] and proxy.url("") in refused[0]
    assert "IMGCRAWL_ALLOW_PROXY=True" in refused[0]
    assert "Traceback" not in result.log


def test_an_allowed_proxy_never_gets_a_target_the_guard_refuses(tmp_path, behind_proxy):
    proxy = behind_proxy
    result, _ = hostile_crawl(tmp_path, "http://gallery.test/", PROXY_DNS, IMGCRAWL_ALLOW_PROXY=True)
    assert result.returncode == 0, result.log[-3000:]
    assert sorted(proxy.hits) == ["http://gallery.test/", "http://gallery.test/a.jpg",
                                  "http://gallery.test/robots.txt"]  # and nothing else
    lines = {line["url"]: (line["status"], line.get("reason")) for line in result.manifest()}
    assert lines == {
        "http://gallery.test/a.jpg": ("downloaded", None),
        "http://intranet.invalid/secret.jpg": ("failed", "dns"),
        "http://metadata.test/latest.jpg": ("failed", "private-address"),
    }
    assert len(warnings(result.log, "dns")) == 1 and len(warnings(result.log, "private-address")) == 1
    assert "Traceback" not in result.log
