"""The extractor on markup copied from real gallery and lazy-loading projects
(tests/fixtures/realworld, provenance in SOURCES.md there and atop each file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from parsel import Selector

from imgcrawl import extract, links

REALWORLD = Path(__file__).resolve().parent / "fixtures" / "realworld"
PAGE = "https://site.example/demo/page.html"


def found(name: str) -> list[str]:
    html = next(REALWORLD.glob(f"{name}_*.html")).read_text()
    return [c.url for c in extract.image_candidates(Selector(text=html), PAGE)]


def test_photoswipe4_takes_each_links_full_size_file():
    urls = found("01")
    flickr = [u for u in urls if "staticflickr" in u]
    assert len(flickr) == 5 and all(u.endswith("_h.jpg") for u in flickr)  # _m thumb, _b medium: no
    # The page's own images, its inline background and og:image are standalone images.
    assert "https://site.example/demo/test/spread.jpg" in urls
    assert "https://site.example/demo/test/luke45.png" in urls
    assert "http://photoswipe.com/test/horizontal-swipe.jpg" in urls
    assert len(urls) == len(set(urls)) == 11


def test_lightgallery_takes_data_src_never_the_240px_thumbnail():
    urls = found("02")
    assert len(urls) == 7
    assert all("images.unsplash.com/photo-" in u and "w=240" not in u for u in urls)
    assert sum("w=1600" in u for u in urls) == 4  # the srcset demo's data-src is the full size
    # The picture demo's data-src is its 400 px variant; data-sources (JSON) is left out.
    assert sum("w=400" in u for u in urls) == 3


def test_justified_gallery_relative_links_to_the_large_files():
    urls = found("03")
    html = (REALWORLD / "03_justified_gallery_figures_relative.html").read_text()
    first = extract.image_candidates(Selector(text=html), PAGE)[0]
    assert first.title == "What's your destination?"  # the caption is on the link
    assert len(urls) == 16
    assert all(u.startswith("https://site.example/photos/") and u.endswith("_b.jpg") for u in urls)


def test_wordpress_gallery_blocks():
    assert found("05") == [
        "http://wptest.local/wp-content/uploads/2020/09/test-image-edited-1-scaled.jpg",
        "http://wptest.local/wp-content/uploads/2020/09/test-image-edited-scaled.jpg",
        "http://wptest.local/wp-content/uploads/2020/04/test-image-scaled.jpg",
        "http://wptest.local/wp-content/uploads/2020/09/test-image-edited-1-682x1024.jpg",
        "http://wptest.local/wp-content/uploads/2020/09/test-image-edited-1024x682.jpg",
        "http://wptest.local/wp-content/uploads/2020/04/test-image-1024x683.jpg",
    ]


def test_lazysizes_data_src_data_srcset_and_lazy_picture():
    urls = found("06")
    assert not any(u.startswith("data:") for u in urls)
    # LQIP: the w=100 src gives way to data-src.
    assert "https://images.unsplash.com/photo-1470116073782-48ae2ccd8ffd?ixlib=rb-1.2.1&auto=format&fit=crop&w=1600&q=80" in urls
    assert not any(u.endswith("w=100") for u in urls)
    # data-srcset: the 1024w candidate of the Jellyfish image.
    assert "https://images.unsplash.com/photo-1523264629844-40dd6bf17c2b?ixlib=rb-1.2.1&auto=format&fit=crop&w=1024&q=60" in urls
    # <picture> with art direction: its <source media> are crops of the <img>'s own file
    # (focal-point and 2:1 crops), so the <img>'s own URL is the picture, once. (Its data-src
    # carries a stray " 1130w", which a browser sends as %201130w.)
    pictures = [u for u in urls if "photo-1501785888041" in u]
    assert pictures == ["https://images.unsplash.com/photo-1501785888041-af3ef285b470?ixlib=rb-1.2.1"
                        "&ixid=eyJhcHBfaWQiOjEyMDd9&auto=format&fit=crop&w=1130&q=80&ar=1.5:1%201130w"]
    # Flickr data-srcset: the _b (768w) file, not _n/_z.
    assert "https://farm1.staticflickr.com/192/504251019_ffc94c77b5_b.jpg" in urls
    assert "https://i.picsum.photos/id/1031/1440/1080.jpg" in urls
    assert len(urls) == len(set(urls))


def test_vanilla_lazyload_picture_skips_avif_and_takes_2x():
    assert found("07") == [f"https://site.example/demo/images/440x560-0{i}.webp" for i in range(1, 7)]


def test_vanilla_lazyload_css_backgrounds():
    assert found("08") == [
        "https://site.example/demo/images/" + name for name in (
            "440x560-01.webp", "440x560-L-02.webp", "440x560-R-02.webp", "440x560-03.webp",
            "440x560-L-04.webp", "440x560-R-04.webp", "220x280-02.webp",
        )
    ]


def test_photoswipe_video_slides_are_neither_images_nor_pages():
    # The video plugin's demo: three video slides (two link their .mp4, one a page), then photos.
    html = next(REALWORLD.glob("09_*.html")).read_text()
    sel = Selector(text=html)
    assert [c.url for c in extract.image_candidates(sel, PAGE)] == [
        f"https://cdn.photoswipe.com/photoswipe-demo-images/photos/{i}/img-2500.jpg" for i in (1, 2, 3)
    ]  # no .mp4, no video page, no poster thumbnail
    assert links.detail_links(sel, PAGE) == []  # the .mp4 files are not followed as pages


def test_lightgallery_video_slides_are_not_images():
    # YouTube, Vimeo and Wistia slides keep their video's URL in data-src; the HTML5 slide
    # keeps its .mp4 in data-video. Their thumbnails are posters.
    urls = found("10")
    assert len(urls) == 4 and all(u.startswith("https://images.unsplash.com/photo-") and "w=1600" in u for u in urls)


@pytest.mark.parametrize("name", ["01", "02", "03", "05", "06", "07", "08", "09", "10"])
def test_every_real_fixture_keeps_its_provenance_comment(name):
    html = next(REALWORLD.glob(f"{name}_*.html")).read_text()
    assert f"realmarkup {name}:" in html[:600]
