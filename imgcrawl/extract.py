"""Markup in, image URLs and links to follow out.

Pure functions over parsel selectors (no Scrapy, no network), so every rule is tested on
plain HTML strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from parsel import Selector
from w3lib.html import get_base_url, strip_html5_whitespace
from w3lib.url import safe_url_string

# Attributes that may carry the real image of an <img>, best first. Lazy loaders keep the
# real URL in data-* attributes and put a placeholder in src.
IMG_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "srcset")
IMG_SRC_ATTRS = ("data-src", "data-original", "data-lazy-src", "src")

IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png gif webp avif bmp tif tiff svg heic heif".split()
)

_PLACEHOLDER_RE = re.compile(r"(?:^|[/_.-])(?:blank|placeholder|spacer|pixel|transparent|1x1)[._-]", re.I)
_PAGE_PARAM_RE = re.compile(r"[?&](?:page|p|pg)=\d+", re.I)
_PAGE_PATH_RE = re.compile(r"/page/\d+/?$", re.I)
_NEXT_TEXT = ("next", "next page", "older", "more", "›", "»", "→", ">", ">>")
_DETAIL_PATH_RE = re.compile(
    r"/(?:gallery|galleries|album|albums|photo|photos|image|images|picture|pictures|"
    r"detail|details|view|item|items|post|set|sets)(?:[/._-]|$)",
    re.I,
)


@dataclass(frozen=True)
class ImageCandidate:
    """One image found on a page: its best full-size URL and the text that names it."""

    url: str
    alt: str = ""
    title: str = ""


@dataclass(frozen=True)
class Links:
    """Pages to follow from a page: pagination first, then gallery/detail pages."""

    pagination: tuple[str, ...] = ()
    details: tuple[str, ...] = ()


def page_base(sel: Selector, page_url: str) -> str:
    """The URL relative links resolve against: ``<base href>`` if the page has one."""
    return get_base_url(sel.get(), page_url)


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


def parse_srcset(value: str) -> list[tuple[str, float, float]]:
    """Split a srcset into ``(url, width, density)`` candidates.

    Follows the HTML parsing rules: URLs may contain commas (``c_fill,w_300``), a
    candidate ends at a comma that follows whitespace or the URL's last character.
    Missing descriptors mean ``1x``; ``w`` and ``x`` are kept apart for ranking.
    """
    candidates = []
    pos, n = 0, len(value)
    while pos < n:
        while pos < n and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        start = pos
        while pos < n and not value[pos].isspace():
            pos += 1
        url = value[start:pos]
        descriptors = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            end = value.find(",", pos)
            end = n if end == -1 else end
            descriptors, pos = value[pos:end], end + 1
        if not url:
            continue
        width, density = 0.0, 0.0
        for desc in descriptors.split():
            try:
                if desc[-1:] in ("w", "W"):
                    width = float(desc[:-1])
                elif desc[-1:] in ("x", "X"):
                    density = float(desc[:-1])
            except ValueError:
                continue
        candidates.append((url, width, density or (0.0 if width else 1.0)))
    return candidates


def largest_in_srcset(value: str | None) -> str | None:
    """The candidate with the largest width (``w``), else the largest density (``x``)."""
    if not value:
        return None
    candidates = parse_srcset(value)
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[1], c[2]))[0]


def is_placeholder(url: str) -> bool:
    """Lazy-load placeholders: data URIs and blank/spacer/1x1 images."""
    if url.startswith("data:"):
        return True
    path = urlsplit(url).path
    return bool(_PLACEHOLDER_RE.search(path.rsplit("/", 1)[-1] + "."))


def is_image_url(url: str) -> bool:
    """Does the URL's path end in an image file extension?"""
    path = urlsplit(url).path.lower()
    return "." in path and path.rsplit(".", 1)[1] in IMAGE_EXTENSIONS


def _first_real(urls, base: str) -> str | None:
    for raw in urls:
        url = absolute_url(raw, base)
        if url and not is_placeholder(url):
            return url
    return None


def best_img_url(img: Selector, base: str) -> str | None:
    """The best URL for one ``<img>``: largest srcset candidate, then lazy-load
    attributes, then ``src``; placeholders are skipped."""
    srcsets = (largest_in_srcset(img.attrib.get(attr)) for attr in IMG_SRCSET_ATTRS)
    found = _first_real(srcsets, base)
    if found:
        return found
    return _first_real((img.attrib.get(attr) for attr in IMG_SRC_ATTRS), base)


def best_picture_url(picture: Selector, base: str) -> str | None:
    """``<picture>``: the largest candidate over its ``<source>`` elements, else its ``<img>``."""
    best: tuple[float, float, str] | None = None
    for source in picture.css("source"):
        for attr in IMG_SRCSET_ATTRS:
            for raw, width, density in parse_srcset(source.attrib.get(attr, "")):
                url = absolute_url(raw, base)
                if url and not is_placeholder(url) and (best is None or (width, density) > best[:2]):
                    best = (width, density, url)
    if best:
        return best[2]
    img = picture.css("img")
    return best_img_url(img[0], base) if img else None


def _link_target(img: Selector, base: str) -> str | None:
    """The URL of the ``<a href>`` around an image, if any."""
    href = img.xpath("ancestor::a[@href][1]/@href").get()
    return absolute_url(href, base) if href else None


def image_candidates(sel: Selector, page_url: str) -> list[ImageCandidate]:
    """Every image on the page, in document order, each URL once."""
    base = page_base(sel, page_url)
    found: dict[str, ImageCandidate] = {}

    def add(url: str | None, alt: str = "", title: str = "") -> None:
        if url and url not in found:
            found[url] = ImageCandidate(url, alt.strip(), title.strip())

    for img in sel.xpath("//img | //picture"):
        tag = img.xpath("name()").get().lower()
        if tag == "img" and img.xpath("ancestor::picture"):
            continue  # handled with its <picture>
        url = best_picture_url(img, base) if tag == "picture" else best_img_url(img, base)
        inner = img if tag == "img" else (img.css("img") or [img])[0]
        link = _link_target(inner, base)
        if link and not is_image_url(link):
            continue  # a thumbnail of a detail page: the page is followed for its image
        # A thumbnail linking to an image file stands for that (full-size) file.
        add(link or url, inner.attrib.get("alt", ""), inner.attrib.get("title", ""))
    for a in sel.css("a[href]"):
        url = absolute_url(a.attrib["href"], base)
        if url and is_image_url(url):
            add(url, " ".join(a.css("::text").getall()), a.attrib.get("title", ""))
    return list(found.values())


def _same_site(url: str, hosts: frozenset[str] | None) -> bool:
    return hosts is None or (urlsplit(url).hostname or "") in hosts


def pagination_links(sel: Selector, page_url: str, hosts: frozenset[str] | None = None) -> list[str]:
    """Next-page links: rel=next, "next"-like link text or class, ``?page=N`` and
    ``/page/N`` links (numbered pagination, so pages fan out instead of forming a chain)."""
    base = page_base(sel, page_url)
    raw = sel.css("link[rel~=next]::attr(href), a[rel~=next]::attr(href)").getall()
    for a in sel.css("a[href]"):
        href = a.attrib["href"]
        text = " ".join(a.css("::text").getall()).strip().lower()
        classes = a.attrib.get("class", "").lower()
        if text in _NEXT_TEXT or "next" in classes.split() or _PAGE_PARAM_RE.search(href) or _PAGE_PATH_RE.search(href.split("?")[0]):
            raw.append(href)
    return _unique_links(raw, base, hosts, page_url)


def detail_links(sel: Selector, page_url: str, hosts: frozenset[str] | None = None) -> list[str]:
    """Gallery/album/detail pages: links that wrap a thumbnail or whose path names one."""
    base = page_base(sel, page_url)
    raw = []
    for a in sel.css("a[href]"):
        href = a.attrib["href"]
        url = absolute_url(href, base)
        if not url or is_image_url(url):
            continue
        if a.css("img, picture") or _DETAIL_PATH_RE.search(urlsplit(url).path):
            raw.append(href)
    return _unique_links(raw, base, hosts, page_url)


def _unique_links(raw, base: str, hosts, page_url: str) -> list[str]:
    seen: dict[str, None] = {}
    for href in raw:
        url = absolute_url(href, base)
        if url and url != page_url and not is_image_url(url) and _same_site(url, hosts):
            seen.setdefault(url, None)
    return list(seen)


def follow_links(sel: Selector, page_url: str, hosts: frozenset[str] | None = None) -> Links:
    pages = pagination_links(sel, page_url, hosts)
    details = [u for u in detail_links(sel, page_url, hosts) if u not in pages]
    return Links(tuple(pages), tuple(details))
