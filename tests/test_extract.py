"""The foundation extraction rules, on plain HTML strings (no reactor, no network)."""

from __future__ import annotations

from parsel import Selector

from imgcrawl import extract, links

PAGE = "https://site.example/gallery/page.html"


def urls(html: str, page: str = PAGE) -> list[str]:
    return [c.url for c in extract.image_candidates(Selector(text=html), page)]


def test_img_src_resolved_against_page():
    assert urls('<img src="a.jpg"><img src="/b.png"><img src="//cdn.example/c.webp">') == [
        "https://site.example/gallery/a.jpg",
        "https://site.example/b.png",
        "https://cdn.example/c.webp",
    ]


def test_base_href_wins_over_page_url():
    html = '<head><base href="https://media.example/photos/"></head><img src="x.jpg">'
    assert urls(html) == ["https://media.example/photos/x.jpg"]


def test_srcset_takes_largest_width_candidate():
    html = '<img src="s.jpg" srcset="s.jpg 320w, l.jpg 1600w, m.jpg 800w" sizes="50vw">'
    assert urls(html) == ["https://site.example/gallery/l.jpg"]


def test_srcset_density_descriptors_and_commas_inside_urls():
    html = (
        '<img srcset="https://img.example/c_fill,w_300/a.jpg 1x, '
        'https://img.example/c_fill,w_900/a.jpg 3x, https://img.example/c_fill,w_600/a.jpg 2x">'
    )
    assert urls(html) == ["https://img.example/c_fill,w_900/a.jpg"]


def test_parse_srcset_without_descriptors_is_1x():
    assert extract.parse_srcset("a.jpg, b.jpg 2x") == [("a.jpg", 0.0, 1.0), ("b.jpg", 0.0, 2.0)]


def test_picture_sources_largest_candidate():
    html = (
        "<picture>"
        '<source srcset="p-800.webp 800w, p-1600.webp 1600w" type="image/webp">'
        '<source srcset="p-1200.jpg 1200w" type="image/jpeg">'
        '<img src="p-400.jpg" alt="A picture">'
        "</picture>"
    )
    candidates = extract.image_candidates(Selector(text=html), PAGE)
    assert [(c.url, c.alt) for c in candidates] == [
        ("https://site.example/gallery/p-1600.webp", "A picture")
    ]


def test_lazy_load_attributes_beat_placeholder_src():
    html = (
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="one.jpg">'
        '<img src="/img/blank.gif" data-original="two.jpg">'
        '<img src="spacer.png" data-lazy-src="three.jpg">'
        '<img src="placeholder.jpg" data-srcset="four-s.jpg 200w, four-l.jpg 900w">'
    )
    assert urls(html) == [
        "https://site.example/gallery/one.jpg",
        "https://site.example/gallery/two.jpg",
        "https://site.example/gallery/three.jpg",
        "https://site.example/gallery/four-l.jpg",
    ]


def test_data_uris_and_duplicates_dropped():
    html = (
        '<img src="data:image/png;base64,iVBORw0KGgo=">'
        '<img src="a.jpg"><img src="./a.jpg#frag"><img src="a.jpg">'
    )
    assert urls(html) == ["https://site.example/gallery/a.jpg"]


def test_link_to_image_file_is_taken_and_replaces_its_thumbnail():
    html = (
        '<a href="/full/big.jpg"><img src="/thumbs/big.jpg" alt="Big"></a>'
        '<a href="/files/plain.png">download</a>'
        '<a href="/about.html">about</a>'
    )
    candidates = extract.image_candidates(Selector(text=html), PAGE)
    assert [(c.url, c.alt) for c in candidates] == [
        ("https://site.example/full/big.jpg", "Big"),
        ("https://site.example/files/plain.png", "download"),
    ]


def test_thumbnail_linking_to_detail_page_is_not_taken():
    html = '<a href="/photo/42"><img src="/thumbs/42.jpg"></a>'
    assert urls(html) == []
    followed = links.follow_links(Selector(text=html), PAGE, frozenset({"site.example"}))
    assert followed.details == ("https://site.example/photo/42",)


def test_alt_and_title_recorded():
    candidates = extract.image_candidates(
        Selector(text='<img src="a.jpg" alt=" A cat " title="Cat, 2024">'), PAGE
    )
    assert (candidates[0].alt, candidates[0].title) == ("A cat", "Cat, 2024")


def test_pagination_rel_next_text_and_page_numbers():
    html = (
        '<head><link rel="next" href="?page=2"></head>'
        '<a href="?page=3">3</a><a href="/gallery/page/4/">4</a>'
        '<a class="pager next" href="/g?p=9">›</a><a href="/other">Next</a>'
        '<a href="https://elsewhere.example/?page=2">2</a>'
    )
    pages = links.pagination_links(Selector(text=html), PAGE, frozenset({"site.example"}))
    assert pages == [
        "https://site.example/gallery/page.html?page=2",
        "https://site.example/gallery/page.html?page=3",
        "https://site.example/gallery/page/4/",
        "https://site.example/g?p=9",
        "https://site.example/other",
    ]


def test_detail_links_stay_on_site_and_skip_image_files():
    html = (
        '<a href="/album/summer">Summer</a>'
        '<a href="https://other.example/album/x">elsewhere</a>'
        '<a href="/photos/1.jpg">file</a>'
        '<a href="/contact">contact</a>'
    )
    details = links.detail_links(Selector(text=html), PAGE, frozenset({"site.example"}))
    assert details == ["https://site.example/album/summer"]


def test_absolute_url_rejects_non_http_and_cleans_whitespace():
    assert links.absolute_url("javascript:void(0)", PAGE) is None
    assert links.absolute_url("  \n /a b.jpg \t", PAGE) == "https://site.example/a%20b.jpg"
    assert links.absolute_url("mailto:x@y", PAGE) is None
