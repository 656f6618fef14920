"""Pages rendered in headless Chromium through scrapy-playwright (``-a render=browser``).

Only pages go to the browser (``meta["playwright"]``, set by the spider); images, robots.txt
and everything else are fetched by imgcrawl's HTTP handler, as in a static crawl. In the
browser:

- every connection the browser opens goes through :mod:`imgcrawl.socksguard`, which checks
  it with the crawl's SSRF guard (the same :class:`~imgcrawl.guard.PrivateAddressGuard`) and
  connects only to the addresses it allowed: pages, scripts, data, each redirect hop and
  WebSockets alike; one that is refused, or that cannot be checked, goes nowhere;
- images, media and fonts are not fetched (``IMGCRAWL_RENDER_BLOCK``): the DOM keeps their
  URLs, and the image files are downloaded once, by Scrapy;
- the page is scrolled to the bottom and an obvious "Load more" control clicked until a
  round adds no image, within ``IMGCRAWL_RENDER_SCROLL_TIME`` seconds and
  ``IMGCRAWL_RENDER_SCROLLS`` rounds; then its DOM is the response the spider parses.

Needs the ``browser`` extra (scrapy-playwright) and the asyncio reactor
(:func:`imgcrawl.render.reactor_for`).
"""

from __future__ import annotations

import asyncio
import logging

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from scrapy_playwright.handler import ScrapyPlaywrightDownloadHandler
from scrapy_playwright.page import PageMethod

from imgcrawl.guard import BlockedRequest, PrivateAddressGuard
from imgcrawl.handlers import HTTPDownloadHandler
from imgcrawl.socksguard import GuardedSocksProxy

logger = logging.getLogger(__name__)

# A round is over once no request has been in flight for QUIET_SECONDS and the page shows
# more images, or, if it shows none more, once PATIENCE_SECONDS have passed: a scroll
# handler may wait for a frame or a timer before it asks for more.
QUIET_SECONDS = 0.3
PATIENCE_SECONDS = 1.0
# A page without scripts shows what it loaded: it is not waited for nor scrolled.
HAS_SCRIPTS_JS = "() => document.scripts.length > 0"
# Elements that show or carry an image; a round that adds none ends the scrolling.
COUNT_IMAGES_JS = """() => document.querySelectorAll(
    'img, picture, [style*="url("], [data-bg], [data-src], [data-srcset]').length"""
# Scroll to the bottom and click the first visible, enabled "load more"-like control that
# is not a link to another page (pagination is Scrapy's). Returns whether it clicked.
SCROLL_AND_LOAD_MORE_JS = r"""() => {
    const root = document.scrollingElement || document.documentElement;
    window.scrollTo(0, root.scrollHeight);
    const label = /^\s*(?:(?:load|show|view|see)\s+more|more\s+(?:photos|images|pictures|results|items))\b/i;
    for (const el of document.querySelectorAll(
            'button, [role="button"], input[type="button"], a:not([href]), a[href="#"], a[href^="javascript:"]')) {
        const text = (el.innerText || el.value || el.getAttribute('aria-label') || '').trim();
        if (text.length > 40 || !label.test(text) || el.disabled) continue;
        const box = el.getBoundingClientRect();
        if (box.width === 0 || box.height === 0) continue;
        el.scrollIntoView({block: 'center'});
        el.click();
        return true;
    }
    return false;
}"""
class NetworkQuiet:
    """Counts a page's requests in flight, to tell when a round's have finished."""

    def __init__(self, page):
        self.page, self.inflight = page, set()
        self.events = {"request": self.started, "requestfinished": self.ended, "requestfailed": self.ended}
        for event, listener in self.events.items():
            page.on(event, listener)
        self.quiet_since = asyncio.get_running_loop().time()

    def started(self, request) -> None:
        self.inflight.add(request)

    def ended(self, request) -> None:
        self.inflight.discard(request)
        self.quiet_since = asyncio.get_running_loop().time()

    def quiet(self, now: float) -> bool:
        return not self.inflight and now - self.quiet_since >= QUIET_SECONDS

    def close(self) -> None:
        for event, listener in self.events.items():
            self.page.remove_listener(event, listener)


async def images_after_round(page, network: NetworkQuiet, before: int, deadline: float) -> int:
    """The page's image count once the round's requests are over (see QUIET_SECONDS)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    count = before
    while (now := loop.time()) < deadline:
        await asyncio.sleep(0.05)
        if not network.quiet(now):
            continue
        count = await page.evaluate(COUNT_IMAGES_JS)
        if count > before or now - started >= PATIENCE_SECONDS:
            break
    return count


async def settle(page, seconds: float, rounds: int) -> int:
    """Scroll and click "load more" until a round adds no image (at most ``rounds`` rounds,
    ``seconds`` in all); the number of rounds that added images."""
    deadline = asyncio.get_running_loop().time() + seconds
    if not await page.evaluate(HAS_SCRIPTS_JS):
        return 0
    network = NetworkQuiet(page)
    grown = 0
    try:
        # The page's own first requests (its data, often fetched once it has loaded); a
        # page that never goes quiet (long polling) is scrolled when the time is half up.
        loop = asyncio.get_running_loop()
        try:
            await page.wait_for_load_state("networkidle", timeout=(deadline - loop.time()) * 500)
        except PlaywrightTimeoutError:
            pass
        count = await page.evaluate(COUNT_IMAGES_JS)
        for _ in range(rounds):
            if asyncio.get_running_loop().time() >= deadline:
                break
            await page.evaluate(SCROLL_AND_LOAD_MORE_JS)
            now = await images_after_round(page, network, count, deadline)
            if now <= count:
                break
            count, grown = now, grown + 1
    except PlaywrightError as exc:
        # The page navigated away or closed: what it has is what it shows.
        logger.debug("Stopped scrolling %s: %s", page.url, exc)
    finally:
        network.close()
    return grown


class BrowserDownloadHandler(ScrapyPlaywrightDownloadHandler, HTTPDownloadHandler):
    """scrapy-playwright's handler for rendered pages; every other request goes to
    imgcrawl's :class:`~imgcrawl.handlers.HTTPDownloadHandler` (its bounds, its pool)."""

    def __init__(self, crawler):
        super().__init__(crawler)
        settings = crawler.settings
        self.crawler = crawler
        self.blocked_types = frozenset(settings.getlist("IMGCRAWL_RENDER_BLOCK"))
        self.allow_private = settings.getbool("IMGCRAWL_ALLOW_PRIVATE")
        self.scroll_seconds = settings.getfloat("IMGCRAWL_RENDER_SCROLL_TIME")
        self.scroll_rounds = settings.getint("IMGCRAWL_RENDER_SCROLLS")
        self.proxy = GuardedSocksProxy(self.check_connection, self.connection_refused)
        self.proxy_started = asyncio.Lock()
        self.refused_hosts: set[str] = set()  # each refused host logged once
        # scrapy-playwright asks this before each request the page makes; True aborts it.
        self.abort_request = self.not_fetched

    async def download_request(self, request):
        if request.meta.get("playwright"):
            await self.start_proxy()
            request.meta.setdefault(
                "playwright_page_methods", [PageMethod(settle, self.scroll_seconds, self.scroll_rounds)])
            request.meta.setdefault("playwright_context_kwargs", {
                "service_workers": "block",  # a service worker's requests would skip the abort hook
                "viewport": {"width": 1280, "height": 1024},
            })
            self.crawler.stats.inc_value("imgcrawl/render/pages")
        return await super().download_request(request)

    async def start_proxy(self) -> None:
        """Before the browser starts (on the first rendered page): the proxy it must use."""
        async with self.proxy_started:
            if self.proxy.server is None:
                port = await self.proxy.start()
                self.config.launch_options["args"] = [
                    *self.config.launch_options.get("args", ()),
                    f"--proxy-server=socks5://127.0.0.1:{port}",
                    "--proxy-bypass-list=<-loopback>",  # loopback too: Chromium skips proxies for it by default
                ]

    async def close(self) -> None:
        await super().close()  # the browser, then
        await self.proxy.close()

    def not_fetched(self, browser_request) -> bool:
        """Images, media and fonts: left to Scrapy (their URLs stay in the DOM)."""
        if browser_request.resource_type in self.blocked_types:
            self.crawler.stats.inc_value("imgcrawl/render/not_fetched")
            return True
        return False

    async def check_connection(self, host: str) -> list[str]:
        """The addresses the browser may connect to for ``host``; raises to refuse."""
        if self.allow_private:
            return [host]
        guard = self.crawler.get_downloader_middleware(PrivateAddressGuard)
        if guard is None:
            raise BlockedRequest("no-guard", "no SSRF guard in DOWNLOADER_MIDDLEWARES to check it "
                                 "(set IMGCRAWL_ALLOW_PRIVATE=True to render unchecked)")
        return await guard.check_host(host.strip("[]"), host)

    def connection_refused(self, target: str, exc: BaseException) -> None:
        """One line per refused host and port. A name that does not resolve is logged at
        DEBUG only: nothing was reached, and Chromium's own background services (updates,
        sign-in) ask for such names where DNS is fenced off."""
        self.crawler.stats.inc_value("imgcrawl/render/refused")
        if target in self.refused_hosts:
            return
        self.refused_hosts.add(target)
        if isinstance(exc, BlockedRequest):
            level, detail = (logging.DEBUG if exc.reason == "dns" else logging.WARNING), exc.detail
        else:
            level, detail = logging.WARNING, f"{type(exc).__name__}: {exc}"
        logger.log(level, "Browser connection refused: %s: %s", target, detail)
