"""Each private Scrapy/Twisted name imgcrawl/compat.py uses still has the shape imgcrawl relies on.

A failure names the installed Scrapy and Twisted and the releases these were checked
against: update imgcrawl/compat.py (and pyproject.toml's pins) for the new release.
Downloads and crawls run in a subprocess, on a real reactor, against 127.0.0.1 servers;
what needs no reactor is checked here.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import scrapy
import twisted
from conftest import LocalSite, run_crawl
from scrapy.utils.test import get_crawler

REPO = Path(__file__).resolve().parent.parent
TESTED = "Scrapy 2.19.0 with Twisted 21.7.0 and 26.10.0"
RUN_TIMEOUT = 120  # seconds, per subprocess
MAXSIZE = 1000  # DOWNLOAD_MAXSIZE of the http11 run; its hostile bodies are 5x that


def changed(what: str) -> str:
    return (
        f"Scrapy {scrapy.__version__} / Twisted {twisted.__version__}: {what} changed shape; "
        f"update imgcrawl/compat.py (tested with {TESTED})"
    )


def private(dotted: str):
    """``"module:Name.attr"``: the object, or a failure naming what is gone."""
    module, _, path = dotted.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        pytest.fail(changed(f"{module}.{path} ({type(exc).__name__}: {exc})"))
    return obj


def load_compat():
    """imgcrawl.compat, imported here rather than at the top so that a name gone from Scrapy
    or Twisted fails each test with the message below, not the whole module with an ImportError."""
    try:
        return importlib.import_module("imgcrawl.compat")
    except ImportError as exc:
        pytest.fail(changed(f"a private name imgcrawl/compat.py imports ({exc})"))


# -- the names compat.py imports or reaches into ---------------------------------------

PRIVATE_NAMES = [
    "scrapy.pipelines.media:_MediaRequestFiltered",
    "scrapy.pipelines.media:MediaPipeline.SpiderInfo",
    "scrapy.core.downloader.handlers.http11:_LenientHTTP11ClientProtocol",
    "scrapy.core.downloader.handlers.http11:_LenientHTTP11ClientFactory",
    "scrapy.utils._download_handlers:get_maxsize_msg",
    "scrapy.utils._download_handlers:get_dataloss_msg",
    "twisted.internet.abstract:FileDescriptor.doWrite",
    "twisted.web.client:HTTPConnectionPool._factory",
    "twisted.web._newclient:HTTP11ClientProtocol._parser",
    "scrapy.core.downloader.handlers.http11:_LenientHTTPClientParser.lineReceived",
    "twisted.web._newclient:HTTPClientParser._finished",
    "twisted.web._newclient:HTTPClientParser.NO_BODY_CODES",
    "scrapy.downloadermiddlewares.httpcompression:HttpCompressionMiddleware._handle_encoding",
    "scrapy.utils._compression:_DecompressionMaxSizeExceeded",
    "scrapy.core.downloader:Downloader._wait_for_download",
    "scrapy.core.downloader:Downloader._process_queue",
    "scrapy.commands:BaseRunSpiderCommand._create_crawler",
]


@pytest.mark.parametrize("dotted", PRIVATE_NAMES)
def test_private_name_exists(dotted):
    private(dotted)


def test_media_request_filtered_is_an_exception():
    filtered = private("scrapy.pipelines.media:_MediaRequestFiltered")
    assert issubclass(filtered, Exception), changed("scrapy.pipelines.media._MediaRequestFiltered")
    assert load_compat().MediaRequestFiltered is filtered


def test_spider_info_keeps_the_media_result_cache_in_downloaded():
    spider_info = private("scrapy.pipelines.media:MediaPipeline.SpiderInfo")
    info = spider_info(scrapy.Spider("s"))
    assert isinstance(getattr(info, "downloaded", None), dict), changed(
        "MediaPipeline.SpiderInfo.downloaded (the per-crawl media result cache)"
    )


def test_scrapys_factory_builds_its_protocol_with_the_pools_quiescent_callback():
    compat = load_compat()
    factory_class = private("scrapy.core.downloader.handlers.http11:_LenientHTTP11ClientFactory")
    protocol_class = private("scrapy.core.downloader.handlers.http11:_LenientHTTP11ClientProtocol")
    twisted_factory = private("twisted.web.client:_HTTP11ClientFactory")
    # HTTPConnectionPool._newConnection calls self._factory(quiescentCallback, metadata).
    assert list(inspect.signature(twisted_factory).parameters) == ["quiescentCallback", "metadata"], changed(
        "twisted.web.client._HTTP11ClientFactory(quiescentCallback, metadata)"
    )
    assert issubclass(factory_class, twisted_factory), changed("http11._LenientHTTP11ClientFactory's base")

    def callback(protocol):
        pass

    for factory, options, built in (
        (factory_class, {}, protocol_class),
        (compat.HeadBoundFactory, {"max_head": 65536}, compat.HeadBoundProtocol),
    ):
        try:
            protocol = factory(callback, "metadata", **options).buildProtocol(None)
        except (AttributeError, TypeError) as exc:
            pytest.fail(changed(f"{factory.__qualname__}.buildProtocol ({type(exc).__name__}: {exc})"))
        assert type(protocol) is built and isinstance(protocol, protocol_class), changed(
            f"{factory.__qualname__}.buildProtocol (built {type(protocol).__qualname__})"
        )
        assert getattr(protocol, "_quiescentCallback", None) is callback, changed(
            f"{built.__qualname__}._quiescentCallback (how a connection returns to the pool)"
        )


def test_scrapys_oversize_and_dataloss_texts():
    compat = load_compat()
    get_maxsize_msg = private("scrapy.utils._download_handlers:get_maxsize_msg")
    get_dataloss_msg = private("scrapy.utils._download_handlers:get_dataloss_msg")
    url = "http://127.0.0.1/a.jpg"
    for expected in (True, False):
        try:
            message = get_maxsize_msg(5000, 1000, scrapy.Request(url), expected=expected)
        except TypeError as exc:
            pytest.fail(changed(f"get_maxsize_msg's signature ({exc})"))
        assert compat.MAXSIZE_TEXT in message, changed(
            f"Scrapy's DOWNLOAD_MAXSIZE warning ({message!r} lacks {compat.MAXSIZE_TEXT!r})"
        )
    message = get_dataloss_msg(url)
    assert message.startswith(compat.DATALOSS_PREFIX), changed(
        f"Scrapy's data-loss warning ({message!r} does not start with {compat.DATALOSS_PREFIX!r})"
    )


# -- stats -----------------------------------------------------------------------------


def exercise(stats) -> dict:
    stats.inc_value("n")
    stats.inc_value("n", 2)
    stats.max_value("max", 5)
    stats.max_value("max", 3)
    stats.min_value("min", 5)
    stats.min_value("min", 7)
    stats.set_value("s", "x")
    return dict(stats.get_stats())


def test_scrapys_stats_collector_still_has_the_shim_ours_skips():
    scrapys = private("scrapy.statscollectors:StatsCollector")
    # Without it, compat.StatsCollector's __getattribute__ = object.__getattribute__ is pointless.
    assert "__getattribute__" in vars(scrapys), changed(
        "scrapy.statscollectors.StatsCollector (it no longer defines __getattribute__, its spider-argument"
        " shim, so imgcrawl.compat.StatsCollector's override is pointless: drop it and STATS_CLASS)"
    )
    memory = private("scrapy.statscollectors:MemoryStatsCollector")
    stats = memory(get_crawler())
    stats.inc_value("n")
    # The shim builds and caches a warning wrapper per stats method: the cost ours avoids.
    assert "_cached_inc_value" in vars(stats), changed("StatsCollector.__getattribute__ (no _cached_ wrappers)")


def test_our_stats_collector_counts_like_scrapys():
    compat = load_compat()
    memory = private("scrapy.statscollectors:MemoryStatsCollector")
    assert issubclass(compat.StatsCollector, memory), changed("scrapy.statscollectors.MemoryStatsCollector")
    crawler = get_crawler(scrapy.Spider)
    ours, scrapys = compat.StatsCollector(crawler), memory(crawler)
    what = "MemoryStatsCollector's methods, called without StatsCollector.__getattribute__,"
    try:
        counted = exercise(ours)
    except Exception as exc:
        pytest.fail(changed(f"{what} ({type(exc).__name__}: {exc})"))
    assert counted == exercise(scrapys) == {"n": 3, "max": 5, "min": 5, "s": "x"}, changed(what)
    assert not any(name.startswith("_cached_") for name in vars(ours)), changed(
        f"StatsCollector's wrappers (ours has {sorted(vars(ours))})"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.inc_value("n", spider=None)  # still accepted (third-party code), no warning
    assert ours.get_value("n") == 4, changed("MemoryStatsCollector.inc_value(spider=...)")
    crawler.spider = scrapy.Spider("s")
    ours.close_spider(reason="finished")
    assert ours.spider_stats == {"s": ours.get_stats()}, changed("MemoryStatsCollector.close_spider")


# -- downloads and crawls on a real reactor ----------------------------------------------

SCRIPT = r'''
import gc, json, logging, socket, sys, traceback

from scrapy.utils.reactor import install_reactor

install_reactor("twisted.internet.epollreactor.EPollReactor")

import scrapy
from twisted.internet import defer, endpoints, protocol, task

from imgcrawl import compat

mode, out_path, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
facts = {"errors": {}, "records": []}


class Capture(logging.Handler):
    """What imgcrawl's log filters see of a record, before any of them changes it."""

    def emit(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        entry = {
            "name": record.name,
            "level": record.levelname,
            "msg": str(record.msg),
            "message": record.getMessage(),
            "args": sorted(record.args) if isinstance(record.args, dict) else type(record.args).__name__,
            "exc": type(exc).__name__ if exc else None,
            "oversize_or_dataloss": compat.is_oversize_or_dataloss(record),
            "robots_error": None,
        }
        if isinstance(record.args, dict):
            entry["f_exception"] = type(record.args.get("f_exception")).__name__
        error = compat.robots_download_error(record)
        if error is not None:
            entry["robots_error"] = [error[0].url, type(error[1]).__name__]
        facts["records"].append(entry)


def capture(level):
    handler = Capture(level)
    logging.getLogger().addHandler(handler)


async def section(name, coro):
    try:
        await coro
    except Exception:
        facts["errors"][name] = traceback.format_exc()


def recv_now(peer):
    try:
        return peer.recv(4096)
    except BlockingIOError:
        return b""


async def send_now(reactor):
    from twisted.internet.abstract import FileDescriptor

    server = socket.create_server(("127.0.0.1", 0))
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.getsockname()[1])
    client = await endpoints.connectProtocol(endpoint, protocol.Protocol())
    peer, _ = server.accept()
    peer.setblocking(False)
    client.transport.write(b"ping")
    before = recv_now(peer)  # no reactor turn yet: Twisted holds it in a buffer
    compat.send_now(client.transport)
    facts["send_now"] = {
        "file_descriptor": isinstance(client.transport, FileDescriptor),
        "before": before.decode(),
        "after": recv_now(peer).decode(),
    }
    client.transport.loseConnection()
    peer.close()
    server.close()


async def downloads(reactor):
    from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
    from scrapy.utils.test import get_crawler
    from twisted.web.client import HTTP11ClientProtocol

    from imgcrawl.handlers import HTTPDownloadHandler

    crawler = get_crawler(settings_dict={
        "TWISTED_REACTOR": "twisted.internet.epollreactor.EPollReactor", "DOWNLOAD_MAXSIZE": args["maxsize"],
    })
    scrapys = HTTP11DownloadHandler(crawler)
    facts["factories"] = {"scrapy": getattr(getattr(scrapys._pool, "_factory", None), "__qualname__", None)}
    await scrapys.close()
    ours = HTTPDownloadHandler(crawler)
    factory = ours._pool._factory
    facts["factories"]["imgcrawl"] = getattr(factory, "func", factory).__qualname__
    try:
        bodies = []
        for _ in range(2):  # one after the other: the second reuses the first's connection
            response = await ours.download_request(scrapy.Request(args["reused"]))
            bodies.append([response.status, response.text])
            await task.deferLater(reactor, 0, lambda: None)
        facts["reused"] = bodies
        facts["protocols"] = sorted({
            type(o).__qualname__ for o in gc.get_objects() if isinstance(o, HTTP11ClientProtocol)
        })
        facts["hostile"] = {}
        for path in ("/declared", "/streamed", "/cut", "/endless-headers", "/bodied-304"):
            try:
                response = await ours.download_request(scrapy.Request(args["hostile"] + path))
                facts["hostile"][path] = response.status
            except Exception as exc:
                facts["hostile"][path] = type(exc).__name__
    finally:
        await ours.close()


async def http11(reactor):
    capture(logging.WARNING)
    await section("send_now", send_now(reactor))
    await section("downloads", downloads(reactor))


def crawl(settings, spider_class, **kwargs):
    from scrapy.crawler import CrawlerProcess

    process = CrawlerProcess({
        "TWISTED_REACTOR": "twisted.internet.epollreactor.EPollReactor", "LOG_LEVEL": "WARNING",
        "RETRY_ENABLED": False, "TELNETCONSOLE_ENABLED": False, "REMOTE_CONTROL_ENABLED": False, **settings,
    })
    capture(logging.WARNING)
    crawler = process.create_crawler(spider_class)
    process.crawl(crawler, **kwargs)
    process.start()
    return crawler


def media():
    from scrapy.pipelines.files import FilesPipeline
    from scrapy.pipelines.media import MediaPipeline
    from scrapy.utils.datatypes import LocalCache

    base = args["base"]
    pipelines = []

    class Pipeline(FilesPipeline):
        def open_spider(self, spider=None):
            super().open_spider()
            facts["downloaded_before"] = type(getattr(self.spiderinfo, "downloaded", None)).__name__
            self.cache = LocalCache(100)
            fingerprint = self.crawler.request_fingerprinter.fingerprint
            self.cache[fingerprint(scrapy.Request(base + "/cached"))] = {
                "url": base + "/cached", "path": "from-cache", "checksum": None, "status": "cached",
            }
            self.urls = {fingerprint(scrapy.Request(base + p)): p for p in ("/cached", "/filtered", "/other")}
            compat.set_media_result_cache(self, self.cache)
            pipelines.append(self)

        def media_downloaded(self, response, request, info, *, item=None):
            raise ValueError(f"refused {request.url}")  # Scrapy sends this on to media_failed

        def media_failed(self, failure, request, info):
            facts.setdefault("media_failed", []).append(request.url[len(base):])
            if request.url.endswith("/filtered"):
                raise compat.MediaRequestFiltered("filtered on purpose")
            raise RuntimeError("an ordinary failure")

        def item_completed(self, results, item, info):
            MediaPipeline.item_completed(self, results, item, info)  # stock LOG_FAILED_RESULTS logging
            facts.setdefault("results", {})[item["name"]] = [
                [ok, value if ok else type(value.value).__name__] for ok, value in results
            ]
            return item

    class Spider(scrapy.Spider):
        name = "compat"

        async def start(self):
            for name in ("cached", "filtered", "other"):
                yield {"name": name, "file_urls": [f"{base}/{name}"]}

    crawler = crawl(
        {"ITEM_PIPELINES": {Pipeline: 1}, "FILES_STORE": args["store"],
         "STATS_CLASS": "imgcrawl.compat.StatsCollector"},
        Spider,
    )
    cache = pipelines[0].cache
    facts["cache"] = {
        pipelines[0].urls.get(key, "?"): type(value).__name__ for key, value in cache.items()
    }
    facts["stats"] = [type(crawler.stats).__qualname__, crawler.stats.get_value("item_scraped_count")]


def robots():
    class Spider(scrapy.Spider):
        name = "compat"

        async def start(self):
            yield scrapy.Request(args["page"])

        def parse(self, response):
            facts.setdefault("pages", []).append(response.status)

    crawl({"ROBOTSTXT_OBEY": True}, Spider)


try:
    if mode == "http11":
        task.react(lambda reactor: defer.ensureDeferred(http11(reactor)))
    else:
        {"media": media, "robots": robots}[mode]()
except SystemExit:
    pass
except Exception:
    facts["errors"][mode] = traceback.format_exc()
with open(out_path, "w") as out:
    json.dump(facts, out, default=repr)
'''


def run(mode: str, tmp: Path, **args) -> dict:
    out = tmp / f"{mode}.json"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode, str(out), json.dumps(args)],
            cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(changed(f"something the {mode} run relies on (it hung for {RUN_TIMEOUT} s)")
                    + "\n" + (exc.stderr or b"")[-4000:].decode(errors="replace"))
    if not out.exists():
        pytest.fail(changed(f"something the {mode} run relies on") + "\n" + proc.stderr[-4000:])
    facts = json.loads(out.read_text())
    facts["stderr"] = proc.stderr
    return facts


def log_tail(facts: dict) -> str:
    return "\n" + facts["stderr"][-3000:]


def no_error(facts: dict, section: str, what: str) -> None:
    error = facts["errors"].get(section)
    assert error is None, changed(what) + "\n" + (error or "")


def respond(handler, head: str, body: bytes, close: bool = True) -> None:
    handler.wfile.write(head.encode() + b"\r\n\r\n" + body)
    handler.wfile.flush()
    handler.close_connection = close


HOSTILE = {
    # Content-Length over DOWNLOAD_MAXSIZE: refused on the headers ("Expected to receive ...").
    "/declared": lambda h: respond(h, f"HTTP/1.1 200 OK\r\nContent-Length: {5 * MAXSIZE}", b"x" * 5 * MAXSIZE),
    # No length, body over DOWNLOAD_MAXSIZE: refused while streaming ("Received ...").
    "/streamed": lambda h: respond(h, "HTTP/1.1 200 OK\r\nConnection: close", b"x" * 5 * MAXSIZE),
    # Cut off after 10 of 100 bytes.
    "/cut": lambda h: respond(h, "HTTP/1.1 200 OK\r\nContent-Length: 100", b"x" * 10),
}


@pytest.fixture(scope="module")
def http11_run(tmp_path_factory):
    reused = LocalSite({"/a": ("text/plain", b"hello")}).start()
    hostile = LocalSite({}, handlers={**HOSTILE, "/endless-headers": endless_headers, "/bodied-304": bodied_304}).start()
    try:
        facts = run("http11", tmp_path_factory.mktemp("http11"),
                    reused=reused.url("/a"), hostile=hostile.url(""), maxsize=MAXSIZE)
        facts["connections"] = reused.connections
        yield facts
    finally:
        reused.stop()
        hostile.stop()


def endless_headers(handler) -> None:
    """Header lines until the client gives up (or 16 MiB, the test's own bound)."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    try:
        for i in range(16 * 1024):
            handler.wfile.write(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000))
    except OSError:
        pass
    handler.close_connection = True


def bodied_304(handler) -> None:
    """A 304 with a body, head and body in one write (as a server sends them)."""
    respond(handler, "HTTP/1.1 304 Not Modified\r\nContent-Length: 5", b"stale", close=False)


def test_send_now_writes_what_twisted_buffered(http11_run):
    no_error(http11_run, "send_now", "twisted.internet.abstract.FileDescriptor.doWrite")
    sent = http11_run["send_now"]
    assert sent["file_descriptor"], changed("a TCP transport, no longer a twisted FileDescriptor,")
    # Twisted still buffers a write until the reactor's next poll: else send_now is not needed.
    assert sent["before"] == "", changed("FileDescriptor.write (it now writes at once: drop send_now)")
    assert sent["after"] == "ping", changed("FileDescriptor.doWrite (wrote nothing when called)")


def test_handler_pool_factory_is_scrapys_and_ours_replaces_it(http11_run):
    no_error(http11_run, "downloads", "HTTP11DownloadHandler._pool._factory or the protocol it builds")
    factories = http11_run["factories"]
    # Scrapy sets its own factory the same way: ours, a subclass, keeps what Scrapy's adds.
    assert factories == {"scrapy": "_LenientHTTP11ClientFactory", "imgcrawl": "HeadBoundFactory"}, changed(
        f"HTTP11DownloadHandler._pool._factory (the factories set: {factories})"
    )
    # The pool builds its connections with _factory, and each returns to the pool when done.
    assert http11_run["protocols"] == ["HeadBoundProtocol"], changed(
        f"twisted HTTPConnectionPool._factory (the connections were {http11_run['protocols']})"
    )
    assert http11_run["reused"] == [[200, "hello"], [200, "hello"]], changed(
        f"a download through imgcrawl's handler (got {http11_run['reused']})"
    )
    assert http11_run["connections"] == 1, changed(
        "_quiescentCallback (a finished connection did not return to the pool)"
    )


def test_endless_headers_fail_with_the_parsers_exception(http11_run):
    # The parser raises in lineReceived; Twisted drops the connection and fails the request
    # with a ResponseFailed holding it, which Scrapy wraps (DownloadFailedError) and our
    # handler unwraps.
    no_error(http11_run, "downloads", "the http11 download handler")
    assert http11_run["hostile"]["/endless-headers"] == "ResponseHeadTooLarge", changed(
        "HTTP11ClientProtocol's parser swap, lineReceived, or how a parser's exception reaches "
        f"the request (got {http11_run['hostile']})"
    )


def test_a_304_with_a_body_fails_with_the_parsers_exception(http11_run):
    # Twisted ends a 304 at its head (NO_BODY_CODES) and hands what came with it to
    # _finished as ``rest``; our parser raises there, as in lineReceived above.
    no_error(http11_run, "downloads", "the http11 download handler")
    assert http11_run["hostile"]["/bodied-304"] == "BodyWithoutRoom", changed(
        f"HTTPClientParser._finished or NO_BODY_CODES (a 304 with a body got {http11_run['hostile']})"
    )


@pytest.mark.parametrize("path", sorted(HOSTILE))
def test_http11_still_warns_with_those_texts(http11_run, path):
    no_error(http11_run, "downloads", "the http11 download handler")
    assert http11_run["hostile"][path] != 200, changed(f"DOWNLOAD_MAXSIZE or DOWNLOAD_FAIL_ON_DATALOSS ({path} "
                                                       f"was not refused: {http11_run['hostile']})")
    warned = [r for r in http11_run["records"] if path in r["message"] and r["level"] == "WARNING"]
    matched = [r for r in warned if r["oversize_or_dataloss"]]
    assert len(matched) == 1, changed(
        f"Scrapy's http11 warning for {path} (imgcrawl matches {len(matched)} of {warned})"
    )
    assert matched[0]["name"] == load_compat().HTTP11_LOGGER, changed(
        f"the logger of Scrapy's http11 warnings ({matched[0]['name']}, filtered at {load_compat().HTTP11_LOGGER})"
    )


@pytest.fixture(scope="module")
def media_run(tmp_path_factory):
    site = LocalSite({p: ("image/jpeg", b"not really") for p in ("/cached", "/filtered", "/other")}).start()
    tmp = tmp_path_factory.mktemp("media")
    try:
        facts = run("media", tmp, base=site.url(""), store=str(tmp / "store"))
        facts["hits"] = dict(site.hits)
        yield facts
    finally:
        site.stop()


def test_media_pipeline_logs_nothing_more_for_media_request_filtered(media_run):
    no_error(media_run, "media", "the media pipeline")
    filtered = load_compat().MediaRequestFiltered.__name__
    failed, results = sorted(media_run.get("media_failed", [])), media_run.get("results", {})
    assert failed == ["/filtered", "/other"] and {k: results.get(k) for k in ("filtered", "other")} == {
        "filtered": [[False, filtered]], "other": [[False, "RuntimeError"]],
    }, changed(f"MediaPipeline's media_failed (called for {failed}, results {results})") + log_tail(media_run)
    errors = [r for r in media_run["records"] if r["level"] == "ERROR"]
    assert not [r for r in errors if r["exc"] == filtered], changed(
        f"MediaPipeline's handling of _MediaRequestFiltered from media_failed (it logged {errors})"
    )
    # Any other exception: Scrapy's ERROR with the traceback, what MediaRequestFiltered spares us.
    assert [r for r in errors if r["exc"] == "RuntimeError" and r["name"] == "scrapy.pipelines.media"], changed(
        f"MediaPipeline's ERROR for a failed media request (got {errors}); the test's premise"
    )


def test_media_result_cache_is_the_dict_media_pipeline_consults(media_run):
    no_error(media_run, "media", "the media pipeline")
    assert media_run["downloaded_before"] == "dict", changed("MediaPipeline.spiderinfo.downloaded")
    # What we put in the cache is what the pipeline answered with, without a download ...
    cached = media_run.get("results", {}).get("cached")
    from_cache = cached and cached[0][0] and cached[0][1]["path"] == "from-cache"
    assert from_cache and "/cached" not in media_run["hits"], changed(
        f"the media result cache (spiderinfo.downloaded was not consulted: {media_run.get('results')})"
    )
    # ... and what it downloads, it records there.
    assert media_run["cache"] == {"/cached": "dict", "/filtered": "Failure", "/other": "Failure"}, changed(
        f"the media result cache (spiderinfo.downloaded not written: {media_run['cache']})"
    )
    assert media_run["stats"] == ["StatsCollector", 3], changed(  # ours, counting in a real crawl
        f"STATS_CLASS in a crawl (stats {media_run['stats']})"
    )


def test_robots_txt_download_error_record(tmp_path):
    def drop(handler):  # no response at all: the download fails
        handler.close_connection = True

    site = LocalSite({"/page": ("text/html", b"<html></html>")}, handlers={"/robots.txt": drop}).start()
    try:
        facts = run("robots", tmp_path, page=site.url("/page"))
    finally:
        site.stop()
    no_error(facts, "robots", "a crawl with ROBOTSTXT_OBEY")
    records = [r for r in facts["records"] if r["name"] == load_compat().ROBOTSTXT_LOGGER]
    record = records[0] if len(records) == 1 else {}
    shape = changed(f"RobotsTxtMiddleware's 'Error downloading' record (got {records})")
    assert record.get("level") == "ERROR" and record["msg"].startswith("Error downloading"), shape
    assert record["args"] == ["f_exception", "request"] and record["exc"], shape
    assert record["robots_error"] == [site.url("/page"), record["f_exception"]], shape
    # The host then counts as allowing everything.
    assert facts.get("pages") == [200], changed("a crawl whose robots.txt failed (its page was not crawled)") + (
        log_tail(facts)
    )


# -- decompression --------------------------------------------------------------------


def gzip_response(size: int):
    import gzip

    from scrapy.http import Response

    body = gzip.compress(b"\0" * size)
    return Response("https://x.example/a.png", body=body, headers={"Content-Encoding": "gzip"})


def test_decompression_over_the_limit_raises_ours_without_scrapys_warning(caplog):
    import scrapy.downloadermiddlewares.httpcompression as httpcompression

    compat = load_compat()
    crawler = get_crawler(settings_dict={"DOWNLOAD_MAXSIZE": 10_000})
    middleware = compat.OneLineHttpCompression.from_crawler(crawler)
    request = scrapy.Request("https://x.example/a.png")
    assert middleware.process_response(request, gzip_response(5_000)).body == b"\0" * 5_000
    with caplog.at_level("WARNING"), pytest.raises(compat.DecompressedTooLarge) as caught:
        middleware.process_response(request, gzip_response(20_000))
    assert caught.value.reason == "too-large" and isinstance(caught.value, scrapy.exceptions.IgnoreRequest)
    assert caught.value.max_size == 10_000, changed("_DecompressionMaxSizeExceeded.max_size")
    assert not [r for r in caplog.records if r.name == httpcompression.logger.name], changed(
        "HttpCompressionMiddleware.process_response (it warned before calling _handle_encoding)"
    )
    # Scrapy's own still raises an IgnoreRequest caused by the private exception.
    with pytest.raises(scrapy.exceptions.IgnoreRequest) as caught:
        httpcompression.HttpCompressionMiddleware.from_crawler(crawler).process_response(
            request, gzip_response(20_000))
    assert isinstance(caught.value.__cause__, compat.DecompressionMaxSizeExceeded), changed(
        "HttpCompressionMiddleware's IgnoreRequest for a body over the limit (its __cause__)"
    )


def test_the_downloader_schedules_each_queued_request_through_wait_for_download():
    # compat.Downloader counts a request against its slot in _wait_for_download, which
    # _process_queue must call (then schedule) once per request it takes off the queue.
    compat = load_compat()
    downloader = private("scrapy.core.downloader:Downloader")
    slot_class = private("scrapy.core.downloader:Slot")
    params = list(inspect.signature(downloader._wait_for_download).parameters)
    assert params == ["self", "slot", "request", "queue_dfd"], changed("Downloader._wait_for_download's signature")
    source = inspect.getsource(downloader._process_queue)
    assert "self._wait_for_download(slot, request, queue_dfd)" in source, changed(
        "Downloader._process_queue (how it starts a queued request)")
    slot = slot_class(concurrency=2, delay=0)
    assert isinstance(slot.transferring, set) and slot.free_transfer_slots() == 2, changed(
        "Slot.transferring (the set its concurrency limit counts)")
    request = scrapy.Request("http://127.0.0.1/a.jpg")
    coroutine = compat.Downloader(get_crawler())._wait_for_download(slot, request, None)
    assert slot.free_transfer_slots() == 1  # counted before the coroutine runs
    coroutine.close()


# -- the crawl command and the log's start and end ---------------------------------------


def test_scrapys_detail_records_at_info(demo_site, tmp_path):
    """Each record IMGCRAWL_BRIEF_LOG moves to DEBUG is still logged, at INFO, by its logger."""
    compat = load_compat()
    result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}", "-a", "max_pages=1",
                       settings={"IMGCRAWL_BRIEF_LOG": False})
    assert result.returncode == 0, result.log[-3000:]
    for name, prefixes in compat.SCRAPY_DETAIL_RECORDS.items():
        for prefix in prefixes:
            rendered = ".*".join(map(re.escape, re.split(r"%\(\w+\)s|%s", prefix)))  # its %-fields, any text
            assert re.search(rf"\[{re.escape(name)}\] INFO: {rendered}", result.log), changed(
                f"Scrapy's INFO record {prefix!r} of {name}")
