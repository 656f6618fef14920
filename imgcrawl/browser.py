"""Pages rendered in headless Chromium through scrapy-playwright (``-a render=browser``).

Only pages go to the browser (``meta["playwright"]``, set by the spider); images, robots.txt
and everything else are fetched by imgcrawl's HTTP handler, as in a static crawl. In the
browser:

- every request the page makes passes the crawl's SSRF guard first (the same
  :class:`~imgcrawl.guard.PrivateAddressGuard`, its ``resolve`` and ``allowed``); a refused
  or unchecked one is aborted (fail closed). WebSockets and WebRTC, which Playwright's
  request routing does not see, are refused outright;
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
from urllib.parse import urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from scrapy_playwright.handler import ScrapyPlaywrightDownloadHandler
from scrapy_playwright.page import PageMethod

from imgcrawl.guard import BlockedRequest, PrivateAddressGuard
from imgcrawl.handlers import HTTPDownloadHandler

logger = logging.getLogger(__name__)

# A round is over once no request has been in flight for QUIET_SECONDS and the page shows
# more images, or, if it shows none more, once PATIENCE_SECONDS have passed: a scroll
# handler may wait for a frame or a timer before it asks for more.
QUIET_SECONDS = 0.3
PATIENCE_SECONDS = 1.5
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
# Run in every frame before the page's own scripts: no WebRTC peer connection (its traffic
# is not routed through the guard).
NO_WEBRTC_JS = "delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection;"


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


async def prepare_page(page, request) -> None:
    """Before navigation: WebSockets connect nowhere (an unanswered route keeps them off the
    network) and WebRTC is gone."""
    await page.route_web_socket("**", _no_websocket)
    await page.add_init_script(NO_WEBRTC_JS)


def _no_websocket(websocket) -> None:
    """Never calls ``connect_to_server``: the socket reaches no server."""


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
        self.refused_hosts: set[str] = set()  # each refused host logged once
        # scrapy-playwright asks this before each request the page makes; True aborts it.
        self.abort_request = self.refuse

    async def download_request(self, request):
        if request.meta.get("playwright"):
            request.meta.setdefault("playwright_page_init_callback", prepare_page)
            request.meta.setdefault(
                "playwright_page_methods", [PageMethod(settle, self.scroll_seconds, self.scroll_rounds)])
            request.meta.setdefault("playwright_context_kwargs", {
                "service_workers": "block",  # a service worker's requests bypass the routing
                "viewport": {"width": 1280, "height": 1024},
            })
            self.crawler.stats.inc_value("imgcrawl/render/pages")
        return await super().download_request(request)

    async def refuse(self, browser_request) -> bool:
        """True (abort) for a request the browser must not make; any error refuses too."""
        try:
            if browser_request.resource_type in self.blocked_types:
                self.crawler.stats.inc_value("imgcrawl/render/not_fetched")
                return True
            reason = await self.guard_refusal(browser_request.url)
        except Exception as exc:  # noqa: BLE001 - fail closed, whatever went wrong
            reason = f"{browser_request.url} could not be checked ({type(exc).__name__}: {exc})"
        if reason:
            self.crawler.stats.inc_value("imgcrawl/render/refused")
            host = urlsplit(browser_request.url).hostname or browser_request.url
            if host not in self.refused_hosts:
                self.refused_hosts.add(host)
                logger.warning("Browser request refused: %s", reason)
            return True
        return False

    async def guard_refusal(self, url: str) -> str | None:
        """Why the SSRF guard refuses ``url`` (its policy and resolver), or None."""
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            return None  # no network
        if parts.scheme not in ("http", "https"):
            return f"{url}: the browser may fetch only http(s)"
        if self.allow_private:
            return None
        guard = self.crawler.get_downloader_middleware(PrivateAddressGuard)
        if guard is None:
            return (f"{url}: no SSRF guard in DOWNLOADER_MIDDLEWARES to check it "
                    "(set IMGCRAWL_ALLOW_PRIVATE=True to render unchecked)")
        try:
            await guard.check_host((parts.hostname or "").strip("[]"), url)
        except BlockedRequest as exc:
            return f"{url}: {exc.detail}"
        return None
