"""Markup in, image URLs out: every image a page shows, each as its best full-size URL.

Pure functions over parsel selectors (no Scrapy, no network), so every rule is tested on
plain HTML strings. URLs resolve with :mod:`imgcrawl.links`, which also picks the pages
to follow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from lxml import etree
from lxml.html import HtmlElement
from parsel import Selector

from imgcrawl.css import css_image_urls
from imgcrawl.links import absolute_url, is_image_url, is_media_url, opens_media, page_base, select

# Attributes that may carry the real image of an <img>, best first. Lazy loaders keep the
# real URL in data-* attributes and put a placeholder in src.
IMG_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "srcset")
IMG_LAZY_SRC_ATTRS = ("data-src", "data-original", "data-lazy-src")
IMG_SRC_ATTRS = IMG_LAZY_SRC_ATTRS + ("src",)
# The attributes above name a size the page shows; the rules rank them (largest first).
DISPLAYED_SIZE_ATTRS = frozenset(IMG_SRCSET_ATTRS + IMG_SRC_ATTRS)
# Attributes that name the full-size file outright (WordPress, Jetpack, zoom and lightbox
# plugins): they beat any srcset, which only lists display sizes.
IMG_FULL_ATTRS = (
    "data-orig-file", "data-full-url", "data-full", "data-hi-res", "data-zoom-image",
    "data-pswp-src", "data-large-file",
)
# On the <a> around a thumbnail, gallery libraries keep the full-size URL here
# (PhotoSwipe 5, lightGallery/Fancybox); ``href`` counts when it names an image file or
# the link is a lightbox one.
LINK_FULL_ATTRS = ("data-pswp-src", "data-src", "data-full", "data-full-url")
LIGHTBOX_LINK_ATTRS = ("data-fancybox", "data-lightbox", "data-pswp-width", "data-lg-size")
# <picture><source type> the pipeline can thumbnail with any Pillow build; AVIF/HEIC/JXL
# decoding depends on how Pillow was built, and the <img> fallback is always one of these.
THUMBNAIL_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff"}
)

_PLACEHOLDER_RE = re.compile(r"(?:^|[/_.-])(?:blank|placeholder|spacer|pixel|transparent|1x1)[._-]", re.I)
# Whole file names lazy loaders use for their stand-in image.
_PLACEHOLDER_STEMS = frozenset({"lazy", "loading", "loader", "empty", "grey", "gray"})
# Page text reaches every pattern here, on the reactor thread, so each must run in time linear
# in its input. _PLACEHOLDER_RE and the patterns in links.py match bounded alternatives; the
# CSS patterns are in imgcrawl.css.

@dataclass(frozen=True)
class ImageCandidate:
    """One image found on a page: its best full-size URL and the text that names it."""

    url: str
    alt: str = ""
    title: str = ""


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
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return bool(_PLACEHOLDER_RE.search(name + ".")) or name.split(".")[0].lower() in _PLACEHOLDER_STEMS


def _first_real(urls: Iterable[str | None], base: str) -> str | None:
    for raw in urls:
        url = absolute_url(raw, base)
        if url and not is_placeholder(url):
            return url
    return None


# The per-element helpers below take lxml elements (a parsel Selector's ``.root``): they
# run for every image of every page, on the reactor thread, and lxml's tree walk and
# attribute lookup cost a fraction of a parsel query or of ``Selector.attrib``'s dict copy.


def best_img_url(img: HtmlElement, base: str) -> str | None:
    """The best URL for one ``<img>``: a full-size attribute, then the largest srcset
    candidate (``sizes`` only says how wide it is shown, so it does not change which is
    largest), then lazy-load attributes, then ``src``; placeholders are skipped."""
    attrib = img.attrib
    full = _first_real((attrib.get(attr) for attr in IMG_FULL_ATTRS), base)
    if full:
        return full
    # WordPress's data-link is the attachment page unless the gallery links to the file.
    link = absolute_url(attrib.get("data-link"), base)
    if link and is_image_url(link):
        return link
    srcsets = (largest_in_srcset(attrib.get(attr)) for attr in IMG_SRCSET_ATTRS)
    return _first_real(srcsets, base) or _first_real(
        (attrib.get(attr) for attr in IMG_SRC_ATTRS), base
    )


def best_picture_url(picture: HtmlElement, base: str, types: frozenset[str] = THUMBNAIL_TYPES) -> str | None:
    """``<picture>``: the largest candidate over its ``<source>`` elements in a format in
    ``types`` (untyped sources count) and its ``<img>``'s srcset, else its ``<img>``. With
    art direction (``media`` on a source) whose sources all name the ``<img>``'s own file,
    the sources are crops of it for other screens: the ``<img>``'s own URL is the picture."""
    sources = [s for s in picture.iter("source") if s.get("type", "").lower() in types | {""}]
    img = list(picture.iter("img"))
    candidates = [
        (width, density, url)
        for node in sources + img[:1]
        for attr in IMG_SRCSET_ATTRS
        for raw, width, density in parse_srcset(node.get(attr, ""))
        if (url := absolute_url(raw, base)) and not is_placeholder(url)
    ]
    own = best_img_url(img[0], base) if img else None
    if own and any(s.get("media") for s in sources) and all(_same_file(url, own) for *_, url in candidates):
        return own
    if candidates:
        return max(candidates, key=lambda c: c[:2])[2]  # the first of the largest
    return own


def _same_file(url: str, other: str) -> bool:
    """Same host and file name: the same picture, whatever size, crop or format the image
    service makes of it (query parameters, or path segments before the name)."""
    a, b = urlsplit(url), urlsplit(other)
    return a.hostname == b.hostname and a.path.rsplit("/", 1)[-1] == b.path.rsplit("/", 1)[-1]


def link_full_url(a: HtmlElement, base: str) -> str | None:
    """The full-size image an ``<a>`` opens: a gallery-library data attribute, or its
    ``href`` when that is an image file or a lightbox link to an image."""
    attrib = a.attrib
    if opens_media(a):
        return None
    found = _first_real((attrib.get(attr) for attr in LINK_FULL_ATTRS), base)
    if found:
        return found
    href = absolute_url(attrib.get("href"), base)
    if href and not is_placeholder(href):
        if is_image_url(href) or any(attr in attrib for attr in LIGHTBOX_LINK_ATTRS):
            return href
    return None


def _sibling_element(el: HtmlElement, preceding: bool = False) -> HtmlElement | None:
    """The next (or previous) element, skipping comments: XPath's ``following-sibling::*[1]``."""
    return next(el.itersiblings(etree.Element, preceding=preceding), None)


def _nearest(el: HtmlElement, tag: str) -> HtmlElement | None:
    return next(el.iterancestors(tag), None)


def _noscript_twin(img: HtmlElement) -> HtmlElement | None:
    """The ``<img>`` in the ``<noscript>`` right after a lazy image: the same picture
    with its real URL, for browsers without JavaScript."""
    after = _sibling_element(img)
    return next(after.iter("img"), None) if after is not None and after.tag == "noscript" else None


def background_urls(node: HtmlElement) -> list[str]:
    """Background images of an element: inline ``style`` and vanilla-lazyload's
    ``data-bg`` / ``data-bg-hidpi`` / ``data-bg-set`` (``|`` separates layers)."""
    attrib = node.attrib
    urls = css_image_urls(attrib.get("style", ""))
    for layer in filter(None, attrib.get("data-bg-set", "").split("|")):
        urls.extend(css_image_urls(f"image-set({layer})"))
    hidpi = attrib.get("data-bg-hidpi") or attrib.get("data-bg")
    if hidpi:
        urls.append(hidpi)
    return urls


def json_ld_images(sel: Selector) -> list[str]:
    """Image URLs in JSON-LD: ``ImageObject`` ``contentUrl``/``url`` and ``image`` values."""
    urls: list[str] = []

    def walk(node) -> None:
        if isinstance(node, list):
            for child in node:
                walk(child)
        elif isinstance(node, dict):
            types = node.get("@type", ())
            is_image = "ImageObject" in ([types] if isinstance(types, str) else types)
            # A VideoObject's (or any other typed object's) contentUrl is not an image.
            for key in ("contentUrl", "url") if is_image else () if types else ("contentUrl",):
                if isinstance(node.get(key), str):
                    urls.append(node[key])
                    break
            image = node.get("image")
            if isinstance(image, str):
                urls.append(image)
            for key, child in node.items():
                if isinstance(child, (dict, list)):
                    walk(child)

    for script in sel.xpath('//script[@type="application/ld+json"]/text()').getall():
        try:
            walk(json.loads(script))
        except ValueError:
            continue  # broken JSON-LD is the site's problem; the rest of the page still counts
    return urls


def meta_images(sel: Selector) -> list[str]:
    """``og:image`` (and its ``:secure_url``/``:url``) and ``twitter:image``."""
    return sel.xpath(
        '//meta[@property="og:image" or @property="og:image:secure_url" or @property="og:image:url"'
        ' or @name="twitter:image" or @property="twitter:image" or @name="twitter:image:src"]/@content'
    ).getall()


class _Found:
    """Image candidates in first-seen order, each URL once."""

    def __init__(self) -> None:
        self.by_url: dict[str, ImageCandidate] = {}

    def add(self, url: str | None, alt: str = "", title: str = "") -> None:
        if url and not is_placeholder(url) and not is_media_url(url) and url not in self.by_url:
            self.by_url[url] = ImageCandidate(url, alt.strip(), title.strip())

    def values(self) -> list[ImageCandidate]:
        return list(self.by_url.values())


def _element_candidate(node: HtmlElement, base: str) -> tuple[str | None, HtmlElement] | None:
    """The best full-size URL of one ``<img>``/``<picture>`` and the ``<img>`` naming it;
    None when the element is followed elsewhere (a detail-page thumbnail, a noscript twin)."""
    is_img = node.tag == "img"
    if is_img and _nearest(node, "picture") is not None:
        return None  # handled with its <picture> (libxml2 may nest it inside a <source>)
    noscript = _nearest(node, "noscript") if is_img else None
    if noscript is not None:
        before = _sibling_element(noscript, preceding=True)
        if before is not None and before.tag == "img":
            return None  # handled with the lazy image it stands in for
    inner = node if is_img else next(node.iter("img"), node)
    own = best_img_url(node, base) if is_img else best_picture_url(node, base)
    twin = _noscript_twin(node) if is_img else None
    if twin is not None and not _first_real(
        (node.get(a) for a in IMG_FULL_ATTRS + IMG_SRCSET_ATTRS + IMG_LAZY_SRC_ATTRS), base
    ):
        own = best_img_url(twin, base) or own  # the lazy one only had a placeholder or LQIP
    full = _first_real((inner.get(attr) for attr in IMG_FULL_ATTRS), base)
    link = _nearest(inner, "a")
    if link is not None and opens_media(link):
        return None  # a video's poster
    if not full and link is not None:
        full = link_full_url(link, base)
        if not full and absolute_url(link.get("href"), base):
            return None  # a thumbnail of a detail page: the page is followed for its image
    return full or own, inner


def _nearest_title(el: HtmlElement) -> str:
    """Lightboxes keep the caption on the link: the nearest ``title`` names the image."""
    for node in (el, *el.iterancestors()):
        title = node.get("title")
        if title is not None:
            return title
    return ""


def image_candidates(sel: Selector, page_url: str) -> list[ImageCandidate]:
    """Every image on the page, each as its best full-size URL, each URL once: images and
    pictures in document order (a thumbnail stands for the file its link opens), then
    lightbox links without a thumbnail, inline backgrounds, JSON-LD and meta images."""
    base = page_base(sel, page_url)
    found = _Found()
    for node in sel.xpath("//img | //picture"):
        result = _element_candidate(node.root, base)
        if result:
            url, inner = result
            found.add(url, inner.get("alt", ""), _nearest_title(inner))
    for a in (link.root for link in sel.css("a")):
        url = link_full_url(a, base)
        if url:
            found.add(url, " ".join(a.itertext()), a.get("title", ""))
    for node in sel.xpath("//*[@style or @data-bg or @data-bg-set or @data-bg-hidpi]"):
        for raw in background_urls(node.root):
            found.add(absolute_url(raw, base), title=node.root.get("title", ""))
    for raw in json_ld_images(sel) + meta_images(sel):
        found.add(absolute_url(raw, base))
    return found.values()


def item_candidates(
    sel: Selector, page_url: str, items: str, attrs: Sequence[str] = (), *, extend: bool = False
) -> list[ImageCandidate]:
    """One image per gallery item matched by ``items`` (CSS, or XPath if it starts with
    ``/`` or ``(``): the first real URL among ``attrs`` looked up on the item and its
    descendants in that order (a ``*srcset`` attribute gives its largest candidate), or,
    without ``attrs``, the first image the generic rules find inside the item.

    With ``extend`` (a site profile's ``image_attrs``), ``attrs`` come first and the generic
    rules still pick the image of an item that has none of them; attributes naming a shown
    size (:data:`DISPLAYED_SIZE_ATTRS`) are left to those rules, which rank the largest
    srcset candidate above ``src`` wherever ``attrs`` lists them."""
    base = page_base(sel, page_url)
    found = _Found()
    first = [a for a in attrs if a not in DISPLAYED_SIZE_ATTRS] if extend else list(attrs)
    for item in select(sel, items):
        alt = item.xpath("descendant-or-self::img[1]/@alt").get("")
        title = item.xpath("descendant-or-self::*[@title][1]/@title").get("")
        url = _first_real(_attr_values(item, first), base) if first else None
        if url or (attrs and not extend):
            found.add(url, alt, title)
            continue
        inner = image_candidates(Selector(text=item.get()), base)
        if inner:
            found.add(inner[0].url, inner[0].alt or alt, inner[0].title or title)
    return found.values()


def _attr_values(item: Selector, attrs: Sequence[str]) -> Iterable[str | None]:
    for attr in attrs:
        for value in item.xpath(f"descendant-or-self::*/@{attr}").getall():
            yield largest_in_srcset(value) if attr.endswith("srcset") else value
