"""URLs on a page: resolving them, telling image files from pages, and picking the pages
a crawl follows.

Pure functions over parsel selectors (no Scrapy, no network), so every rule is tested on
plain HTML strings. :mod:`imgcrawl.extract` resolves image URLs with the helpers here, so
this module imports nothing from it; site profiles use :func:`select` and
:func:`rewrite_url` as well.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from lxml.html import HtmlElement
from parsel import Selector
from w3lib.html import get_base_url, strip_html5_whitespace
from w3lib.url import safe_url_string

# Extensions that make a URL an image file: fetched as an image, never followed as a page.
IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png gif webp avif bmp tif tiff svg heic heif".split()
)
# Video and audio files (and their stream playlists): never fetched as an image (a gallery's
# video slide links to one) and never followed as a page.
MEDIA_EXTENSIONS = frozenset(
    "mp4 m4v mov webm ogv ogg avi mkv wmv flv mpg mpeg 3gp m3u8 mpd mp3 m4a wav aac flac".split()
)

# These see hrefs from the page: each matches fixed words or one run of digits from a given
# start, so their time stays linear in the href's length (tests/test_bounds_regex.py).
# Lightbox links that open something other than an image (Fancybox's data-type,
# PhotoSwipe's data-pswp-type) ...
_NON_IMAGE_LIGHTBOX_TYPES = frozenset({"iframe", "video", "inline", "ajax", "html", "clone"})
_LIGHTBOX_TYPE_ATTRS = ("data-type", "data-pswp-type")
# ... or a video slide: lightGallery's (data-video, data-poster) and PhotoSwipe's video plugin's.
_VIDEO_LINK_ATTRS = ("data-video", "data-poster", "data-pswp-video-src")
_PAGE_PARAM_RE = re.compile(r"[?&](?:page|p|pg)=\d+", re.I)
_PAGE_PATH_RE = re.compile(r"/page/\d+/?$", re.I)
_NEXT_TEXT = ("next", "next page", "older", "more", "›", "»", "→", ">", ">>")
_DETAIL_PATH_RE = re.compile(
    r"/(?:gallery|galleries|album|albums|photo|photos|image|images|picture|pictures|"
    r"detail|details|view|item|items|post|set|sets)(?:[/._-]|$)",
    re.I,
)


@dataclass(frozen=True)
class Links:
    """Pages to follow from a page: pagination first, then gallery/detail pages."""

    pagination: tuple[str, ...] = ()
    details: tuple[str, ...] = ()


def page_base(sel: Selector, page_url: str) -> str:
    """The URL relative links resolve against: ``<base href>`` if the page has one."""
    # Only the <base> elements go to w3lib: serializing the whole page for it cost more
    # than finding the page's images.
    return get_base_url("".join(sel.xpath("//base").getall()), page_url)


def absolute_url(value: str | None, base: str) -> str | None:
    """Resolve ``value`` against ``base``; None for empty, ``data:``, ``javascript:`` and
    non-HTTP URLs. Whitespace is stripped, entities are already decoded by the parser,
    fragments are dropped and the result is percent-encoded the way browsers do."""
    if not value:
        return None
    value = strip_html5_whitespace(value)
    if not value or value.startswith("#"):
        return None
    url = safe_url_string(urljoin(base, value))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return url.split("#", 1)[0]


def is_absolute_http(url: str) -> bool:
    """An absolute http(s) URL with a host: what a start URL must be."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _extension(url: str) -> str:
    path = urlsplit(url).path.lower()
    return path.rsplit(".", 1)[1] if "." in path else ""


def is_image_url(url: str) -> bool:
    """Does the URL's path end in an image file extension?"""
    return _extension(url) in IMAGE_EXTENSIONS


def is_media_url(url: str) -> bool:
    """Does the URL's path end in a video or audio file extension?"""
    return _extension(url) in MEDIA_EXTENSIONS


def opens_media(a: HtmlElement) -> bool:
    """Does a (lightbox) link open a video, an iframe or other non-image content? Then what
    it opens is neither an image nor a page to follow, and the thumbnail in it (a video's
    poster) is no gallery image."""
    attrib = a.attrib
    if any(attrib.get(attr, "").lower() in _NON_IMAGE_LIGHTBOX_TYPES for attr in _LIGHTBOX_TYPE_ATTRS):
        return True
    # The extension needs no resolving: a relative href has the same path ending.
    return any(attr in attrib for attr in _VIDEO_LINK_ATTRS) or is_media_url(attrib.get("href", ""))


def select(sel: Selector, query: str) -> list[Selector]:
    """CSS, or XPath when the query starts with ``/`` or ``(``."""
    return sel.xpath(query) if query.lstrip().startswith(("/", "(")) else sel.css(query)


def rewrite_url(url: str, rules: Sequence[tuple[re.Pattern, str]]) -> str:
    """Apply ``(pattern, replacement)`` rules in order, e.g. ``_thumb`` → ``_full``."""
    for pattern, replacement in rules:
        url = pattern.sub(replacement, url)
    return url


def selected_links(sel: Selector, page_url: str, query: str, hosts: frozenset[str] | None = None) -> list[str]:
    """Pages named by a selector: its elements' ``href`` (or the selected attribute/text)."""
    base = page_base(sel, page_url)
    raw = [
        # An attribute or text node is the URL; an element gives its (or its link's) href.
        node.get() if isinstance(node.root, str) else node.xpath("descendant-or-self::a/@href").get()
        for node in select(sel, query)
    ]
    return _unique_links(raw, base, hosts, page_url)


def _links(sel: Selector) -> list[HtmlElement]:
    return [a.root for a in sel.css("a[href]")]


def _same_site(url: str, hosts: frozenset[str] | None) -> bool:
    return hosts is None or (urlsplit(url).hostname or "") in hosts


def pagination_links(sel: Selector, page_url: str, hosts: frozenset[str] | None = None) -> list[str]:
    """Next-page links: rel=next, "next"-like link text or class, ``?page=N`` and
    ``/page/N`` links (numbered pagination, so pages fan out instead of forming a chain)."""
    base = page_base(sel, page_url)
    raw = sel.css("link[rel~=next]::attr(href), a[rel~=next]::attr(href)").getall()
    for a in _links(sel):
        href = a.get("href")
        text = " ".join(a.itertext()).strip().lower()
        classes = a.get("class", "").lower()
        if text in _NEXT_TEXT or "next" in classes.split() or _PAGE_PARAM_RE.search(href) or _PAGE_PATH_RE.search(href.split("?")[0]):
            raw.append(href)
    return _unique_links(raw, base, hosts, page_url)


def detail_links(sel: Selector, page_url: str, hosts: frozenset[str] | None = None) -> list[str]:
    """Gallery/album/detail pages: links that wrap a thumbnail or whose path names one."""
    base = page_base(sel, page_url)
    raw = []
    for a in _links(sel):
        href = a.get("href")
        url = absolute_url(href, base)
        if not url or is_image_url(url) or opens_media(a):
            continue
        if next(a.iter("img", "picture"), None) is not None or _DETAIL_PATH_RE.search(urlsplit(url).path):
            raw.append(href)
    return _unique_links(raw, base, hosts, page_url)


def _unique_links(raw, base: str, hosts, page_url: str) -> list[str]:
    seen: dict[str, None] = {}
    for href in raw:
        url = absolute_url(href, base)
        if url and url != page_url and not is_image_url(url) and not is_media_url(url) and _same_site(url, hosts):
            seen.setdefault(url, None)
    return list(seen)


def follow_links(sel: Selector, page_url: str, hosts: frozenset[str] | None = None) -> Links:
    pages = pagination_links(sel, page_url, hosts)
    details = [u for u in detail_links(sel, page_url, hosts) if u not in pages]
    return Links(tuple(pages), tuple(details))
