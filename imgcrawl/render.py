"""How a gallery page is read: as the server sent it, or rendered in a headless browser.

``-a render=static`` (the default) parses the HTML as served. ``-a render=browser`` renders
every page in headless Chromium (scrapy-playwright, :mod:`imgcrawl.browser`) and parses the
DOM the page's scripts built. ``-a render=auto`` renders only a page whose HTML has no image
but scripts that look like they build it. A site profile says the same with ``render = "..."``.

Pure: no import beyond the standard library, so a command can choose the reactor before a
crawl starts (:func:`reactor_for`) and profiles are checked without a crawler.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # nothing at run time: `imgcrawl --help` reads the modes without parsel
    from parsel import Selector

STATIC, BROWSER, AUTO = "static", "browser", "auto"
RENDER_MODES = (STATIC, BROWSER, AUTO)

# scrapy-playwright runs only on it (and refuses any other reactor at start-up).
ASYNCIO_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
# The download handler that renders pages with meta["playwright"] and fetches the rest as
# imgcrawl's HTTP handler does.
BROWSER_HANDLER = "imgcrawl.browser.BrowserDownloadHandler"

# Inline script text that builds or fills the page: DOM writes, fetched data, a src set by code.
_BUILDING_CALLS = (
    "createelement", "innerhtml", "insertadjacenthtml", "appendchild", ".append(", "fetch(",
    "xmlhttprequest", ".src=", ".src =", "setattribute('src'", 'setattribute("src"',
    "intersectionobserver",
)
# Empty elements single-page apps mount into.
_MOUNT_POINTS = ("app", "root", "__next", "__nuxt", "gallery", "grid")


def parse_mode(value: str | None, default: str = STATIC) -> str:
    """The render mode ``value`` names (``None``: ``default``); ValueError with one line else."""
    if value is None:
        return default
    mode = value.strip().lower()
    if mode not in RENDER_MODES:
        raise ValueError(f"bad render={value!r}: need one of {', '.join(RENDER_MODES)}, e.g. -a render=browser")
    return mode


def reactor_for(mode: str) -> str | None:
    """The Twisted reactor a crawl in ``mode`` needs, or None when the project's
    ``TWISTED_REACTOR`` will do. A command that builds its own crawler process calls
    this before the process exists (the reactor is installed once per process)."""
    return ASYNCIO_REACTOR if mode in (BROWSER, AUTO) else None


def browser_settings(settings) -> dict:
    """The Scrapy settings (spider priority) a rendering crawl runs with, from imgcrawl's
    ``IMGCRAWL_BROWSER`` / ``IMGCRAWL_RENDER_*`` in ``settings`` (a Scrapy Settings)."""
    heap_mb = settings.getint("IMGCRAWL_RENDER_MEMORY_MB")
    return {
        "TWISTED_REACTOR": ASYNCIO_REACTOR,
        "DOWNLOAD_HANDLERS": {**settings.getdict("DOWNLOAD_HANDLERS"), "http": BROWSER_HANDLER,
                              "https": BROWSER_HANDLER},
        "PLAYWRIGHT_BROWSER_TYPE": "chromium",
        "PLAYWRIGHT_LAUNCH_OPTIONS": {
            "executable_path": settings.get("IMGCRAWL_BROWSER"),
            "headless": True,
            "args": [
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-gpu", "--dns-prefetch-disable",
                # Every connection goes through imgcrawl.socksguard (added at launch); UDP
                # cannot, so no WebRTC but through it and no QUIC.
                "--force-webrtc-ip-handling-policy=disable_non_proxied_udp", "--disable-quic",
                # Memory: each renderer's JavaScript heap is capped, /dev/shm is not used (a
                # container's is small), and renderers are few.
                f"--js-flags=--max-old-space-size={heap_mb}",
                "--disable-dev-shm-usage",
                f"--renderer-process-limit={settings.getint('IMGCRAWL_RENDER_PAGES') + 1}",
            ],
        },
        "PLAYWRIGHT_MAX_CONTEXTS": 1,
        "PLAYWRIGHT_MAX_PAGES_PER_CONTEXT": settings.getint("IMGCRAWL_RENDER_PAGES"),
        "PLAYWRIGHT_DEFAULT_NAVIGATION_TIMEOUT": settings.getfloat("IMGCRAWL_RENDER_TIMEOUT") * 1000,
    }


def looks_script_built(sel: Selector) -> bool:
    """Does a page (that showed no image) look like its scripts build its content? An inline
    script that writes the DOM, fetches data or sets a ``src``; or an empty single-page-app
    mount point with an external script. Substring checks only: linear in the page."""
    inline = " ".join(sel.xpath("//script[not(@src)][not(@type) or contains(@type, 'javascript') "
                                "or @type='module']/text()").getall()).lower()
    if any(call in inline for call in _BUILDING_CALLS):
        return True
    if not sel.xpath("//script[@src]"):
        return False
    return any(sel.xpath("//*[@id=$id][not(*)][not(normalize-space())]", id=mount) for mount in _MOUNT_POINTS)


# Pages that looked built by scripts and had no image, in a crawl that did not render them.
HINT_STAT = "imgcrawl/render/hinted"


def enable_browser(settings) -> str | None:
    """Switch a crawl's (not yet frozen) Scrapy ``settings`` to rendering, or say in one line
    why it cannot: scrapy-playwright or the browser missing, or another reactor asked for."""
    if importlib.util.find_spec("scrapy_playwright") is None:
        return "render=browser needs scrapy-playwright: pip install 'imgcrawl[browser]'"
    executable = settings.get("IMGCRAWL_BROWSER")
    if not executable or not os.access(executable, os.X_OK):
        return (f"render=browser needs Chromium at {executable}: apt-get install chromium, "
                "or point -s IMGCRAWL_BROWSER=/path/to/chromium at one")
    settings.set("TWISTED_REACTOR", ASYNCIO_REACTOR, priority="spider")
    if settings.get("TWISTED_REACTOR") != ASYNCIO_REACTOR:
        return (f"render=browser runs on the asyncio reactor, but TWISTED_REACTOR is set to "
                f"{settings.get('TWISTED_REACTOR')} on the command line: drop that -s")
    settings.setdict(browser_settings(settings), priority="spider")
    return None
