"""The generic gallery spider: ``scrapy crawl gallery -a url=https://site/gallery``.

Per-site spiders subclass :class:`GallerySpider` and override one hook
(``image_candidates``, ``next_pages``, ``detail_pages``, ``rewrite``), or name a site
profile (``site_profile = "wordpress"``, see :mod:`imgcrawl.sites`); ``-a site=NAME`` and
``-a profile=FILE.toml`` do the same from the command line.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy import signals
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response, TextResponse
from twisted.python.failure import Failure

from imgcrawl import distributed, extract, links
from imgcrawl import render as rendering
from imgcrawl.arguments import init_parameters, missing_url, parse_arguments
from imgcrawl.failures import report_failure
from imgcrawl.items import GalleryItem

logger = logging.getLogger(__name__)

# Marks a request from page_request() as a page max_pages counts. Taken off when the engine
# schedules the request, so its retries and redirects (which copy its meta) do not count again.
NEW_PAGE = "imgcrawl_new_page"


class PageBudget:
    """``max_pages``, counted as pages the scheduler accepted.

    The engine sends request_scheduled, offers the request to the scheduler, and sends
    request_dropped if the dupefilter refused it, all in one synchronous call: a page is
    counted on the first and given back on the second, so duplicates cost no budget.
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self.count = 0
        self._counted: scrapy.Request | None = None

    def full(self) -> bool:
        return self.limit is not None and self.count >= self.limit

    def mark(self, request: scrapy.Request) -> scrapy.Request:
        request.meta[NEW_PAGE] = True
        return request

    def scheduled(self, request: scrapy.Request) -> None:
        if not request.meta.pop(NEW_PAGE, False):
            return  # a retry or redirect of a page already counted, or not a page_request page
        if self.full():
            # The exact check: spider output can be read ahead of scheduling (the asyncio
            # reactor queues a callback's output), so page_request may have said yes too often.
            raise IgnoreRequest
        self.count += 1
        self._counted = request

    def dropped(self, request: scrapy.Request) -> None:
        if request is self._counted:
            self.count -= 1
        self._counted = None


class GallerySpider(scrapy.Spider):
    """Any gallery: every image on the pages reachable from ``-a url=`` through pagination
    and detail pages, each as its best full-size URL (see :mod:`imgcrawl.extract`)."""

    name = "gallery"
    example_url = "https://example.com/gallery"
    # -a names a subclass reads from ``self`` without naming them in its ``__init__``
    # (Scrapy sets every -a as an attribute); named ``__init__`` parameters are known anyway.
    extra_arguments: tuple[str, ...] = ()
    # A built-in profile (imgcrawl/sites/NAME.toml) this spider uses unless -a site/profile says otherwise.
    site_profile: str | None = None

    @classmethod
    def known_arguments(cls) -> list[str]:
        return init_parameters(cls, GallerySpider, cls.extra_arguments)

    def __init__(
        self,
        url: str | None = None,
        max_pages: str | int | None = None,
        max_images: str | int | None = None,
        site: str | None = None,
        profile: str | None = None,
        render: str | None = None,
        *args: Any,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.cmd_example = f"scrapy crawl {self.name} -a url={self.example_url}"
        parsed = parse_arguments(
            url, max_pages, max_images, site, profile, given=kwargs, known=self.known_arguments(),
            default_profile=self.site_profile, start_urls=list(getattr(self, "start_urls", None) or ()),
            example=self.cmd_example,
        )
        self.argument_error = parsed.error
        self.profile, self.start_urls, self.url_missing = parsed.profile, parsed.start_urls, parsed.url_missing
        self.max_images = parsed.max_images
        self.render = rendering.STATIC  # how pages are read: -a render=, else the profile's
        if not self.argument_error:
            try:
                self.render = rendering.parse_mode(render, (self.profile and self.profile.render) or rendering.STATIC)
            except ValueError as exc:
                self.argument_error = str(exc)
        self.images_queued = 0
        self.pages = PageBudget(parsed.max_pages)
        # Stay inside the start URLs' sites and the site's own domains (images on CDNs are
        # allowed by the pipeline).
        self.allowed_hosts = frozenset(
            [urlsplit(u).hostname for u in self.start_urls]
            + list(self.profile.domains if self.profile else ())
            + list(getattr(type(self), "allowed_domains", ()))
        )
        self.allowed_domains = sorted(self.allowed_hosts)

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> "GallerySpider":
        spider = super().from_crawler(crawler, *args, **kwargs)
        if spider.profile and spider.profile.settings:
            # Settings freeze only after the spider is built, so the profile's per-site
            # settings still apply; -s on the command line (higher priority) wins.
            crawler.settings.setdict(spider.profile.settings, priority="spider")
        if spider.render != rendering.STATIC and not spider.argument_error:
            # Before the crawl starts: the reactor is installed from these settings next.
            spider.argument_error = rendering.enable_browser(crawler.settings)
        spider.detail_depth = crawler.settings.getint("IMGCRAWL_DETAIL_DEPTH", 3)
        crawler.signals.connect(spider.pages.scheduled, signal=signals.request_scheduled)
        crawler.signals.connect(spider.pages.dropped, signal=signals.request_dropped)
        if distributed.redis_url(crawler.settings):
            # The shared frontier holds pages of every worker's sites: no offsite filter
            # from this worker's own start URLs; links are followed within each page's site.
            spider.allowed_domains = []
        elif spider.url_missing and not spider.argument_error:
            spider.argument_error = missing_url(spider.cmd_example)
        return spider

    async def start(self) -> AsyncIterator[Any]:
        if self.argument_error:
            # One line, no traceback: the crawl closes at once with this reason.
            logger.error("imgcrawl: %s", self.argument_error)
            raise scrapy.exceptions.CloseSpider("bad_argument")
        if self.profile:
            logger.info("Site profile %s%s", self.profile.name,
                        f": {self.profile.description}" if self.profile.description else "")
        for url in self.start_urls:
            request = self.page_request(url)
            if request:
                yield request

    # -- hooks a per-site spider may override ---------------------------------------

    def image_candidates(self, response: TextResponse) -> Iterable[extract.ImageCandidate]:
        if self.profile and self.profile.items:
            return extract.item_candidates(
                response.selector, response.url, self.profile.items, self.profile.image_attrs,
                extend="image_attrs" not in self.profile.replace,
            )
        return extract.image_candidates(response.selector, response.url)

    def next_pages(self, response: TextResponse) -> Iterable[str]:
        return self._profile_links(response, "next_page", links.pagination_links)

    def detail_pages(self, response: TextResponse) -> Iterable[str]:
        return self._profile_links(response, "detail_page", links.detail_links)

    def _profile_links(self, response: TextResponse, key: str, generic) -> list[str]:
        """The links the profile's selector ``key`` picks, then the generic rules' (unless
        the profile replaces them), each once."""
        hosts = self.site_hosts(response)
        query = getattr(self.profile, key, None) if self.profile else None
        picked = links.selected_links(response.selector, response.url, query, hosts) if query else []
        if query and key in self.profile.replace:
            return list(picked)
        return list(dict.fromkeys([*picked, *generic(response.selector, response.url, hosts)]))

    def rewrite(self, url: str) -> str | None:
        """The URL to fetch for an image found as ``url``; None skips it."""
        return self.profile.image_url(url) if self.profile else url

    # -- the crawl -------------------------------------------------------------------

    def site_hosts(self, response: Response) -> frozenset[str]:
        """Hosts to follow links to: the start URLs' and, for pages another distributed
        worker started (or a Redis start URL), the page's own."""
        return self.allowed_hosts | {urlsplit(response.url).hostname}

    def enough_images(self) -> bool:
        return self.max_images is not None and self.images_queued >= self.max_images

    def page_request(self, url: str, **kwargs: Any) -> scrapy.Request | None:
        """A request for a page, or None once ``max_pages`` pages are scheduled or enough
        images are queued. Pages already crawled are left to Scrapy's dupefilter (which
        JOBDIR persists and a distributed crawl shares)."""
        if self.enough_images() or self.pages.full():
            return None
        if self.render == rendering.BROWSER:
            kwargs["meta"] = {**kwargs.get("meta", {}), "playwright": True}
        return self.pages.mark(scrapy.Request(url, callback=self.parse, errback=self.page_failed, **kwargs))

    def script_built_page(self, response: TextResponse) -> Iterable[scrapy.Request]:
        """A page with no image whose scripts look like they build it: rendered once more
        with ``render=auto``, else one line (the first time) and a stat the summary reports."""
        if self.render == rendering.AUTO:
            meta = {"detail_hops": response.meta.get("detail_hops", 0), "playwright": True}
            yield scrapy.Request(response.url, callback=self.parse, errback=self.page_failed,
                                 dont_filter=True, priority=1, meta=meta)
            return
        if not self.crawler.stats.get_value(rendering.HINT_STAT):
            logger.warning("imgcrawl: %s has no image in its HTML, but scripts that look like they "
                           "build the page: crawl it with -a render=browser", response.url)
        self.crawler.stats.inc_value(rendering.HINT_STAT)

    def page_failed(self, failure: Failure) -> None:
        """One WARNING line with the reason and a stat, instead of Scrapy's ERROR + traceback."""
        report_failure(self.crawler, "Page", failure.request, failure.value)

    def parse(self, response: Response, **kwargs: Any) -> Iterable[Any]:
        if not isinstance(response, TextResponse):
            return
        seen: set[str] = set()
        candidates = list(self.image_candidates(response))
        if not candidates and not response.meta.get("playwright") and rendering.looks_script_built(response.selector):
            yield from self.script_built_page(response)
        page_title = response.xpath("normalize-space((//title)[1])").get() or None
        for position, candidate in enumerate(candidates):
            if self.enough_images():
                break
            url = self.rewrite(candidate.url)
            if not url or url in seen:
                continue  # excluded by the site's rules, or rewritten to one already queued
            seen.add(url)
            self.images_queued += 1
            yield GalleryItem(
                image_urls=[url],
                page_url=response.url,
                position=position,
                alt=candidate.alt,
                title=candidate.title,
                page_title=page_title,
            )
        pages = list(self.next_pages(response))
        hops = response.meta.get("detail_hops", 0)
        details = [u for u in self.detail_pages(response) if u not in pages]
        if hops >= self.detail_depth:
            details = []
        # Pagination first (higher priority) so every listing page is found early; it stays
        # at the same detail depth, so long galleries are crawled to the end.
        for url in pages:
            request = self.page_request(url, priority=1, meta={"detail_hops": hops})
            if request:
                yield request
        for url in details:
            request = self.page_request(url, meta={"detail_hops": hops + 1})
            if request:
                yield request
