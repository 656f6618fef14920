"""The generic gallery spider: ``scrapy crawl gallery -a url=https://site/gallery``.

Per-site spiders subclass :class:`GallerySpider` and override one hook
(``image_candidates``, ``next_pages``, ``detail_pages``) or set ``start_urls``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.http import Response, TextResponse

from imgcrawl import distributed, extract
from imgcrawl.items import GalleryItem

logger = logging.getLogger(__name__)


class BadArgument(ValueError):
    """A spider argument that is missing or malformed; its message is the one line shown."""


def missing_url(example: str) -> str:
    return f"missing -a url=...: give the gallery to crawl, e.g. {example}"


def parse_urls(value: str | None, example: str) -> list[str]:
    if not value or not value.strip():
        raise BadArgument(missing_url(example))
    urls = [u.strip() for u in value.split(",") if u.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadArgument(
                f"bad -a url={url!r}: need an absolute http(s) URL, e.g. {example}"
            )
    return urls


def parse_count(name: str, value: Any, default: int | None) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        number = -1
    if number < 1:
        raise BadArgument(
            f"bad -a {name}={value!r}: need a whole number of at least 1, e.g. -a {name}=100"
        )
    return number


class GallerySpider(scrapy.Spider):
    name = "gallery"
    example_url = "https://example.com/gallery"

    def __init__(
        self,
        url: str | None = None,
        max_pages: str | int | None = None,
        max_images: str | int | None = None,
        *args: Any,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.argument_error: str | None = None
        self.max_pages: int | None = None
        self.max_images: int | None = None
        self.pages_scheduled = 0
        self.images_queued = 0
        self._seen_pages: set[str] = set()
        # Checked in from_crawler(): a distributed worker may take its start URLs from Redis instead.
        self.url_missing = url is None and not getattr(self, "start_urls", None)
        self.cmd_example = cmd_example = f"scrapy crawl {self.name} -a url={self.example_url}"
        try:
            if self.url_missing:
                self.start_urls = []
            elif url is not None:
                self.start_urls = parse_urls(url, cmd_example)
            self.max_pages = parse_count("max_pages", max_pages, None)
            self.max_images = parse_count("max_images", max_images, None)
        except BadArgument as exc:
            self.argument_error = str(exc)
            self.start_urls = []
            return
        # Stay inside the start URLs' sites (images on CDNs are allowed by the pipeline).
        self.allowed_hosts = frozenset(urlsplit(u).hostname for u in self.start_urls)
        self.allowed_domains = sorted(self.allowed_hosts)

    @classmethod
    def from_crawler(cls, crawler, *args: Any, **kwargs: Any):
        spider = super().from_crawler(crawler, *args, **kwargs)
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
        for url in self.start_urls:
            request = self.page_request(url)
            if request:
                yield request

    # -- hooks a per-site spider may override ---------------------------------------

    def image_candidates(self, response: TextResponse) -> Iterable[extract.ImageCandidate]:
        return extract.image_candidates(response.selector, response.url)

    def next_pages(self, response: TextResponse) -> Iterable[str]:
        return extract.pagination_links(response.selector, response.url, self.site_hosts(response))

    def detail_pages(self, response: TextResponse) -> Iterable[str]:
        return extract.detail_links(response.selector, response.url, self.site_hosts(response))

    # -- the crawl -------------------------------------------------------------------

    def site_hosts(self, response: Response) -> frozenset[str]:
        """Hosts to follow links to: the start URLs' and, for pages another distributed
        worker started (or a Redis start URL), the page's own."""
        return self.allowed_hosts | {urlsplit(response.url).hostname}

    def enough_images(self) -> bool:
        return self.max_images is not None and self.images_queued >= self.max_images

    def page_request(self, url: str, **kwargs: Any) -> scrapy.Request | None:
        """A request for a page not seen before, within ``max_pages``."""
        if url in self._seen_pages or self.enough_images():
            return None
        if self.max_pages is not None and self.pages_scheduled >= self.max_pages:
            return None
        self._seen_pages.add(url)
        self.pages_scheduled += 1
        return scrapy.Request(url, callback=self.parse, **kwargs)

    def parse(self, response: Response, **kwargs: Any) -> Iterable[Any]:
        if not isinstance(response, TextResponse):
            return
        for candidate in self.image_candidates(response):
            if self.enough_images():
                break
            self.images_queued += 1
            yield GalleryItem(
                image_urls=[candidate.url],
                page_url=response.url,
                alt=candidate.alt,
                title=candidate.title,
            )
        pages = list(self.next_pages(response))
        details = [u for u in self.detail_pages(response) if u not in pages]
        # Pagination first (higher priority) so every listing page is found early.
        for url in pages:
            request = self.page_request(url, priority=1)
            if request:
                yield request
        for url in details:
            request = self.page_request(url)
            if request:
                yield request
