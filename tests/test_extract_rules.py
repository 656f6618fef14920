"""Each extraction rule on markup shaped like real sites' (pure functions, no crawl)."""

from __future__ import annotations

import re

import pytest
from parsel import Selector

from imgcrawl import css, extract, links

PAGE = "https://photos.example/gallery/page.html"
GIF_1x1 = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="


def urls(html: str, page: str = PAGE) -> list[str]:
    return [c.url for c in extract.image_candidates(Selector(text=html), page)]


# -- img, srcset, sizes, picture ------------------------------------------------------

def test_srcset_w_descriptors_with_sizes_takes_the_widest():
    html = ('<img src="/a-300.jpg" sizes="(min-width: 1000px) 930px, 90vw" '
            'srcset="/a-300.jpg 300w, /a-1600.jpg 1600w, /a-800.jpg 800w" alt="A">')
    assert urls(html) == ["https://photos.example/a-1600.jpg"]


def test_srcset_x_descriptors_take_the_densest():
    assert urls('<img src="/b.jpg" srcset="/b.jpg 1x, /b@3x.jpg 3x, /b@2x.jpg 2x">') == [
        "https://photos.example/b@3x.jpg"]


def test_srcset_with_commas_inside_urls_and_newlines():
    # Cloudinary-style transformations put commas in the path; lazysizes demos wrap lines.
    html = ('<img srcset="https://res.cdn.example/c_fill,w_300/x.jpg 300w,\n\t'
            'https://res.cdn.example/c_fill,w_1200/x.jpg 1200w">')
    assert urls(html) == ["https://res.cdn.example/c_fill,w_1200/x.jpg"]


def test_picture_takes_the_largest_source_in_a_thumbnailable_format():
    html = """<picture>
      <source type="image/avif" srcset="/p-2400.avif 2400w, /p-1200.avif 1200w">
      <source type="image/webp" srcset="/p-800.webp 800w, /p-1600.webp 1600w">
      <source type="image/jpeg" srcset="/p-1000.jpg 1000w">
      <img src="/p-400.jpg" alt="P"></picture>"""
    assert urls(html) == ["https://photos.example/p-1600.webp"]


def test_picture_with_only_unthumbnailable_sources_falls_back_to_the_img():
    html = ('<picture><source type="image/avif" srcset="/q-2x.avif 2x">'
            '<img src="/q.webp" srcset="/q.webp 1x, /q-2x.webp 2x"></picture>')
    assert urls(html) == ["https://photos.example/q-2x.webp"]


def test_noscript_fallback_of_a_lazy_image_is_taken_once():
    html = (f'<img class="lazy" src="{GIF_1x1}" alt="N">'
            '<noscript><img src="/n-full.jpg" alt="N"></noscript>'
            '<img class="lazy" data-src="/m.jpg"><noscript><img src="/m.jpg"></noscript>')
    assert urls(html) == ["https://photos.example/n-full.jpg", "https://photos.example/m.jpg"]


def test_noscript_twin_after_a_comment_with_the_nearest_title():
    html = (f'<figure title="Sunset"><img class="lazy" src="{GIF_1x1}" alt="S"><!-- lazysizes -->'
            '<noscript><img src="/sunset.jpg" alt="S"></noscript></figure>')
    found = extract.image_candidates(Selector(text=html), PAGE)
    assert [(c.url, c.alt, c.title) for c in found] == [("https://photos.example/sunset.jpg", "S", "Sunset")]


def test_lqip_src_gives_way_to_the_noscript_original():
    html = '<img src="/tiny/lqip.jpg" class="lazyload"><noscript><img src="/big.jpg"></noscript>'
    assert urls(html) == ["https://photos.example/big.jpg"]


# -- lazy-load and gallery-library attributes -----------------------------------------

@pytest.mark.parametrize("attr", [
    "data-src", "data-original", "data-lazy-src", "data-full", "data-full-url", "data-large-file",
    "data-orig-file", "data-zoom-image", "data-hi-res",
])
def test_lazy_attribute_beats_a_placeholder_src(attr):
    assert urls(f'<img src="{GIF_1x1}" {attr}="/real.jpg">') == ["https://photos.example/real.jpg"]


@pytest.mark.parametrize("attr", ["data-srcset", "data-lazy-srcset"])
def test_lazy_srcset_attribute_gives_its_largest(attr):
    html = f'<img src="/img/blank.gif" {attr}="/s-480.jpg 480w, /s-960.jpg 960w">'
    assert urls(html) == ["https://photos.example/s-960.jpg"]


def test_full_size_attribute_beats_srcset():
    # Jetpack: srcset lists display sizes, data-orig-file is the upload.
    html = ('<img src="/up/x-300x200.jpg" srcset="/up/x-300x200.jpg 300w, /up/x-1024x683.jpg 1024w" '
            'data-orig-file="/up/x.jpg" data-large-file="/up/x-1024x683.jpg">')
    assert urls(html) == ["https://photos.example/up/x.jpg"]


def test_photoswipe5_data_pswp_src_on_the_link():
    html = ('<a href="/photo/7/" data-pswp-src="/full/7.jpg" data-pswp-width="2000">'
            '<img src="/thumb/7.jpg"></a>')
    assert urls(html) == ["https://photos.example/full/7.jpg"]


def test_lightgallery_data_src_on_the_link_without_an_extension():
    html = ('<a data-lg-size="1600-2400" data-src="https://images.cdn.example/photo-1?w=1600&amp;q=80">'
            '<img src="https://images.cdn.example/photo-1?w=240&amp;q=80"></a>')
    assert urls(html) == ["https://images.cdn.example/photo-1?w=1600&q=80"]


def test_fancybox_href_is_the_image_but_not_for_iframes():
    html = ('<a data-fancybox="g" href="https://cdn.example/i/abc123"><img src="/t/abc.jpg"></a>'
            '<a data-fancybox data-type="iframe" href="https://video.example/embed/1">Video</a>')
    assert urls(html) == ["https://cdn.example/i/abc123"]


def test_wordpress_gallery_block_data_full_url_and_data_link():
    html = """<ul class="blocks-gallery-grid">
      <li><figure><img src="/up/a-1024x682.jpg" data-full-url="/up/a-scaled.jpg"
           data-link="/a-attachment-page/"></figure></li>
      <li><figure><img src="/up/b-1024x682.jpg" data-link="/up/b.jpg"></figure></li>
      <li><figure><img src="/up/c-1024x682.jpg" data-link="/c-attachment-page/"></figure></li></ul>"""
    assert urls(html) == ["https://photos.example/up/a-scaled.jpg", "https://photos.example/up/b.jpg",
                          "https://photos.example/up/c-1024x682.jpg"]


@pytest.mark.parametrize("placeholder", [
    GIF_1x1, "/img/blank.gif", "/assets/placeholder.png", "/static/lazy.gif", "/i/spacer.gif",
    "/img/1x1.png", "/theme/loading.gif",
])
def test_placeholders_are_never_taken(placeholder):
    assert urls(f'<img src="{placeholder}" data-src="{placeholder}"><img src="/real.jpg">') == [
        "https://photos.example/real.jpg"]


# -- thumbnails wrapped in links -------------------------------------------------------

def test_thumbnail_linking_to_the_file_gives_the_file_not_the_thumbnail():
    html = '<a href="/photos/1_b.jpg" title="One"><img src="/photos/1_m.jpg"></a>'
    assert urls(html) == ["https://photos.example/photos/1_b.jpg"]


def test_thumbnail_linking_to_a_detail_page_is_followed_not_taken():
    html = '<a href="/photo/42/"><img data-src="/thumbs/42.jpg"></a>'
    sel = Selector(text=html)
    assert urls(html) == []
    assert links.detail_links(sel, PAGE) == ["https://photos.example/photo/42/"]


# -- page-level images -----------------------------------------------------------------

def test_og_image_twitter_image_and_json_ld():
    html = """<head>
      <meta property="og:image" content="https://photos.example/og.jpg">
      <meta name="twitter:image" content="/tw.jpg">
      <script type="application/ld+json">{"@context": "https://schema.org", "@type": "ImageGallery",
        "associatedMedia": [{"@type": "ImageObject", "contentUrl": "/ld/1.jpg", "thumbnailUrl": "/ld/1t.jpg"},
                            {"@type": "ImageObject", "url": "/ld/2.jpg"}]}</script>
      <script type="application/ld+json">{"@type": "Article", "image": "/ld/article.jpg"}</script>
      <script type="application/ld+json">{not json</script></head>"""
    assert set(urls(html)) == {"https://photos.example/" + p for p in
                               ("og.jpg", "tw.jpg", "ld/1.jpg", "ld/2.jpg", "ld/article.jpg")}


def test_inline_background_images_and_image_set():
    html = """<div style="background-image: url('/bg/a.jpg')"></div>
      <div style='background:url("/bg/b.png") no-repeat'></div>
      <div style="background-image: image-set(url('/bg/c-1x.webp') 1x, url('/bg/c-2x.webp') 2x)"></div>
      <a class="lazy" data-bg-set='url("/bg/d-1x.webp") 1x, url("/bg/d-2x.webp") 2x'></a>
      <a class="lazy" data-bg="/bg/e.webp" data-bg-hidpi="/bg/e-2x.webp"></a>"""
    assert urls(html) == ["https://photos.example/bg/" + p for p in
                          ("a.jpg", "b.png", "c-2x.webp", "d-2x.webp", "e-2x.webp")]


def test_css_image_urls_keeps_every_layer():
    style = "background-image: image-set(url(l1.jpg) 1x, url(l2.jpg) 2x), url(r.jpg)"
    assert css.css_image_urls(style) == ["l2.jpg", "r.jpg"]


# -- URL hygiene ------------------------------------------------------------------------

def test_url_hygiene_base_protocol_relative_entities_whitespace_fragments_once():
    html = """<html><head><base href="https://static.example/media/"></head><body>
      <img src="  rel/one.jpg  ">
      <img src="//cdn.example/two.jpg#zoom">
      <img src="/three.jpg?size=large&amp;v=2">
      <a href="rel/one.jpg"><img src="rel/one-thumb.jpg"></a>
      <img src="rel/one.jpg#again"></body></html>"""
    assert urls(html) == ["https://static.example/media/rel/one.jpg", "https://cdn.example/two.jpg",
                          "https://static.example/three.jpg?size=large&v=2"]


def test_non_http_urls_are_dropped():
    assert urls('<img src="javascript:void(0)"><img src="ftp://x.example/a.jpg"><img src="#">') == []


# -- profile building blocks -------------------------------------------------------------

GRID = """<div class="grid">
  <div class="item" title="One"><img src="/t/1.jpg" data-full="/f/1.jpg" alt="one"></div>
  <div class="item"><img src="/t/2.jpg" srcset="/t/2.jpg 300w, /m/2.jpg 900w"></div>
  <div class="item"><a href="/f/3.jpg"><img src="/t/3.jpg"></a></div></div>
  <img src="/logo.png"><nav><a class="next" href="/gallery/2">more</a></nav>"""


def test_item_candidates_follow_the_attribute_order():
    found = extract.item_candidates(Selector(text=GRID), PAGE, "div.item", ["data-full", "srcset", "href", "src"])
    assert [c.url for c in found] == ["https://photos.example/f/1.jpg", "https://photos.example/m/2.jpg",
                                      "https://photos.example/f/3.jpg"]
    assert (found[0].alt, found[0].title) == ("one", "One")


def test_item_candidates_without_attributes_use_the_generic_rules_per_item():
    found = extract.item_candidates(Selector(text=GRID), PAGE, "//div[@class='item']")
    assert [c.url for c in found] == ["https://photos.example/f/1.jpg", "https://photos.example/m/2.jpg",
                                      "https://photos.example/f/3.jpg"]


def test_selected_links_css_and_xpath():
    sel = Selector(text=GRID)
    assert links.selected_links(sel, PAGE, "nav a.next") == ["https://photos.example/gallery/2"]
    assert links.selected_links(sel, PAGE, "//nav/a/@href") == ["https://photos.example/gallery/2"]
    assert links.selected_links(sel, PAGE, "nav") == ["https://photos.example/gallery/2"]


def test_rewrite_url_rules_apply_in_order():
    rules = [(re.compile(r"_thumb(\.\w+)$"), r"_full\1"), (re.compile(r"[?&]w=\d+$"), "")]
    assert links.rewrite_url("https://x.example/a_thumb.jpg", rules) == "https://x.example/a_full.jpg"
    assert links.rewrite_url("https://x.example/b.jpg?w=300", rules) == "https://x.example/b.jpg"


def test_a_video_is_never_an_image():
    html = """<a data-fancybox="g" href="/clips/a.mp4"><img src="/posters/a.jpg"></a>
      <a href="/clips/b.webm" data-pswp-width="1920"><img src="/posters/b.jpg"></a>
      <a data-fancybox data-type="video" href="https://video.example/watch?v=1"><img src="/posters/c.jpg"></a>
      <a data-lg-size="1280-720" data-src="//www.youtube.com/watch?v=2" data-poster="/posters/d.jpg"><img src="/posters/d.jpg"></a>
      <div style="background-image: url(/loops/e.mp4)"></div>
      <script type="application/ld+json">{"@type": "VideoObject", "contentUrl": "https://cdn.example/f",
        "thumbnailUrl": "/posters/f.jpg"}</script>
      <a href="/photos/g.jpg"><img src="/thumbs/g.jpg"></a>"""
    assert urls(html) == ["https://photos.example/photos/g.jpg"]


def test_art_direction_crops_give_way_to_the_imgs_own_file():
    crops = """<picture>
      <source media="(max-width: 600px)" srcset="https://img.example/c_fill,w_1200,h_1200/hero.jpg 1200w">
      <source media="(min-width: 1600px)" srcset="https://img.example/c_crop,w_2400,h_800/hero.jpg 2400w">
      <img src="https://img.example/w_1600/hero.jpg"></picture>"""
    assert urls(crops) == ["https://img.example/w_1600/hero.jpg"]
    # Other files for other screens, or formats of the same picture: the largest, as before.
    others = crops.replace("/hero.jpg 1200w", "/hero-square.jpg 1200w")
    assert urls(others) == ["https://img.example/c_crop,w_2400,h_800/hero.jpg"]
    formats = """<picture><source type="image/webp" srcset="/a-800.webp 800w, /a-1600.webp 1600w">
      <img src="/a-800.jpg" srcset="/a-800.jpg 800w"></picture>"""
    assert urls(formats) == ["https://photos.example/a-1600.webp"]
