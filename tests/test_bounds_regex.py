"""Markup a hostile page controls costs time linear in its size: no extractor rule backtracks.

Each rule gets a 1 MB attribute or text built to make a backtracking pattern quadratic
(nested ``url(``, long runs of spaces, unterminated quotes, many ``image-set(``…) and must
get through image_candidates, pagination_links and detail_links well within the bound
(the pattern ``css_urls`` replaced took time quadratic in their length on some of these).
``css_urls`` must find exactly what that pattern found.
"""

from __future__ import annotations

import html
import random
import re
import time

import pytest
from parsel import Selector

from imgcrawl.css import css_image_urls, css_urls
from imgcrawl.extract import image_candidates
from imgcrawl.links import pagination_links, detail_links

PAGE = "https://site.example/gallery/"
MB = 1 << 20
SECONDS = 2.0  # generous: linear code takes a fraction of this

# What css_urls replaced, kept as the reference for what it must find.
OLD_CSS_URL_RE = re.compile(r"url\(\s*(['\"]?)(.+?)\1\s*\)\s*(?:([\d.]+)x)?", re.I)


def mb_of(unit: str, head: str = "", tail: str = "") -> str:
    return head + unit * ((MB - len(head) - len(tail)) // len(unit)) + tail


# CSS text (style, data-bg-set): every shape that made the old url() pattern backtrack.
CSS = {
    "nested url(": mb_of("url("),
    "url( then spaces": mb_of(" ", "url(a"),
    "spaces that do not close": mb_of(" ", "x) url(a", "b"),  # data-bg-set adds a ")" at the end
    "url( then spaces then )": mb_of(" ", "url(a", "\n)"),
    "unterminated double quotes": mb_of('url("'),
    "unterminated single quotes": mb_of("url('a"),
    "quote then spaces": mb_of(" ", "url('a'"),
    "quotes and spaces": mb_of("' ", "url('"),
    "lines that never close": mb_of("url(a\n", "", ")"),
    "many image-set(": mb_of("image-set("),
    "image-set( never closed": mb_of("(a)", "image-set("),
    "image-set( entries": mb_of("image-set(url(a.jpg) 1x, "),
    "nested image-set(": mb_of("image-set(x)", "image-set("),
    "digits after url()": mb_of("1", "url(a.jpg) "),
    "-webkit- runs": mb_of("-webkit-"),
}
# Text for the other rules: URLs, srcsets, link text.
TEXT = {
    "spaces": mb_of(" ", "a.jpg"),
    "commas": mb_of(",", "a.jpg"),
    "srcset entries": mb_of("a.jpg 1x, "),
    "url( in a URL": mb_of("url("),
    "placeholder words": mb_of("blank", "/"),
    "page params": mb_of("?page="),
    "page path digits": mb_of("1", "/page/", "x"),
    "detail words": mb_of("/gallery"),
    "dots": mb_of("."),
}
# Where page text meets a rule: the markup with the hostile value in its place.
RULES = {
    "style": '<div style="{v}"></div>',
    "data-bg-set": '<div data-bg-set="{v}"></div>',
    "data-bg": '<div data-bg="{v}"></div>',
    "img srcset": '<img srcset="{v}">',
    "img data-srcset": '<img data-srcset="{v}" src="/blank.gif">',
    "img data-src": '<img data-src="{v}" src="/blank.gif">',
    "img src": '<img src="{v}">',
    "img full-size attribute": '<img data-orig-file="{v}" src="/a.jpg">',
    "img data-link": '<img data-link="{v}" src="/a.jpg">',
    "picture source": '<picture><source srcset="{v}"><img src="/a.jpg"></picture>',
    "noscript twin": '<img src="/blank.gif"><noscript><img src="{v}"></noscript>',
    "link around a thumbnail": '<a href="{v}"><img src="/t.jpg"></a>',
    "lightbox link": '<a data-fancybox href="{v}">open</a>',
    "link data attribute": '<a data-pswp-src="{v}"><img src="/t.jpg"></a>',
    "link text": '<a href="/next/">{v}</a>',
    "link class": '<a class="{v}" href="/x/">x</a>',
    "rel=next": '<link rel="next" href="{v}">',
    "og:image": '<meta property="og:image" content="{v}">',
    "JSON-LD": '<script type="application/ld+json">{{"image": "{v}"}}</script>',
    "base href": '<base href="{v}"><img src="a.jpg">',
}
CSS_RULES = ("style", "data-bg-set")
CASES = [
    pytest.param(rule, name, value, id=f"{rule}: {name}")
    for rule in RULES
    for name, value in (CSS if rule in CSS_RULES else TEXT).items()
]


@pytest.mark.parametrize(("rule", "name", "value"), CASES)
def test_a_hostile_megabyte_is_extracted_in_linear_time(rule, name, value):
    value = value if rule == "JSON-LD" else html.escape(value)
    sel = Selector(text=f"<html><head></head><body>{RULES[rule].format(v=value)}</body></html>")
    for extractor in (image_candidates, pagination_links, detail_links):
        started = time.perf_counter()
        extractor(sel, PAGE)
        elapsed = time.perf_counter() - started
        assert elapsed < SECONDS, f"{extractor.__name__}, {rule} with {name}: {elapsed:.1f} s"


def test_css_urls_finds_what_the_old_pattern_found():
    tokens = ["url(", "URL(", "(", ")", "'", '"', " ", "\n", "\t", "\xa0", "a", "b.jpg", "2",
              "1.5", ".", "x", "X", ",", "image-set("]
    rng = random.Random(20261201)
    for _ in range(20_000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 16)))
        assert css_urls(text) == OLD_CSS_URL_RE.findall(text), repr(text)


@pytest.mark.parametrize(("style", "urls"), [
    ("background: url(/a.jpg) no-repeat", ["/a.jpg"]),
    ("background: url( '/a b.jpg' )", ["/a b.jpg"]),
    ('background: url("/a(1).jpg"), url(/b.jpg)', ["/a(1).jpg", "/b.jpg"]),
    ("image-set(url(a.jpg) 1x, url(b.jpg) 2x)", ["b.jpg"]),
    ("image-set(url(a.jpg) 3x, url(b.jpg) 1.2.3x)", ["a.jpg"]),  # a broken density counts as 1x
    ('url("unterminated.jpg)', ['"unterminated.jpg']),  # as the old pattern read it
])
def test_css_image_urls(style, urls):
    assert css_image_urls(style) == urls
