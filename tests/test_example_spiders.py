"""The example site spiders, and meta-tests over every spider (as gallery-dl does).

Each spider crawls its saved fixture end to end: a real ``scrapy crawl NAME -a url=…``
against the fixture served on 127.0.0.1 (the spiders' real domains do not resolve here;
absolute URLs in a fixture are pointed at the local server), with every image path the
crawl asks for served as a distinct JPEG, so the test sees exactly which files were taken.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from scrapy.spiderloader import SpiderLoader
from scrapy.utils.misc import walk_modules_iter
from scrapy.utils.project import get_project_settings
from scrapy.utils.spider import iter_spider_classes
from scrapy.utils.url import url_is_from_any_domain

from conftest import LocalSite, run_crawl
from imgcrawl.demo import make_image

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REALWORLD = FIXTURES / "realworld"
LAZY = FIXTURES / "spiders" / "lazylisting"
_ABSOLUTE_HOST_RE = re.compile(r"https?://[A-Za-z0-9.-]+(?::\d+)?")
_IMAGE_PATH_RE = re.compile(r"\.(?:jpe?g|png|gif|webp)$|^/photo-", re.I)


class ImagesOnDemand(dict):
    """The site's pages, plus a distinct small JPEG for any image path requested."""

    def get(self, path, default=None):
        if path not in self and _IMAGE_PATH_RE.search(urlsplit(path).path):
            seed = int(hashlib.sha1(path.encode()).hexdigest()[:8], 16)
            self[path] = ("image/jpeg", make_image(random.Random(seed), "jpg", path[-20:]))
        return super().get(path, default)


def _lazy_listing_pages() -> dict[str, str]:
    template = (LAZY / "photo.html").read_text()
    pages = {"/latest/": (LAZY / "latest.html").read_text(),
             "/latest/?page=2": (LAZY / "latest-page2.html").read_text()}
    for n in range(101, 106):
        pages[f"/photo/{n}/"] = template.replace("{id}", str(n)).replace("{other}", str(101 + (n - 100) % 5))
    return pages


# name -> (start path, {path: html}, the image paths a correct crawl takes)
SPIDER_FIXTURES = {
    "gallery": (
        "/test/main/gallery_of_figures.html",
        {"/test/main/gallery_of_figures.html": (REALWORLD / "03_justified_gallery_figures_relative.html").read_text()},
        {f"/test/photos/{name}_b.jpg" for name in (
            "8083451788_552becfbc7 7948632554_01f6ae6b6f 7302459122_19fa1d8223 7222046648_5bf70e893a "
            "7002395006_29fdc85f7a 7062575651_b23918b11a 6841267340_855273fd7e 6958456697_e56a37bb5f "
            "6791628438_affaa19e10 6916180091_9c9559e463 6880502467_d4b3c4b2a8 6876412479_6268c6e2aa "
            "6840627709_92ed52fb41 6812090617_5fd5bbdda0 6806687375_07d2b7a1f9 6798453217_72dea2d06e"
        ).split()},
    ),
    "wordpress": (
        "/classic/gallery/",
        {"/classic/gallery/": (REALWORLD / "05_wp_gutenberg_gallery_fixtures.html").read_text()},
        {"/wp-content/uploads/2020/09/test-image-edited-1-scaled.jpg",
         "/wp-content/uploads/2020/09/test-image-edited-scaled.jpg",
         "/wp-content/uploads/2020/04/test-image-scaled.jpg",
         # The nested-block galleries link only to the 1024 px copies: those are the largest.
         "/wp-content/uploads/2020/09/test-image-edited-1-682x1024.jpg",
         "/wp-content/uploads/2020/09/test-image-edited-1024x682.jpg",
         "/wp-content/uploads/2020/04/test-image-1024x683.jpg"},
    ),
    "lightgallery": (
        "/demos/responsive/",
        {"/demos/responsive/": (REALWORLD / "02_lightgallery_unsplash_srcset_sources.html").read_text()},
        None,  # computed below: each link's data-src, never the 240 px thumbnail
    ),
    "lazylisting": (
        "/latest/",
        _lazy_listing_pages(),
        {f"/media/{n}-2048.jpg" for n in range(101, 106)},
    ),
}


def _lightgallery_expected(html: str) -> set[str]:
    srcs = re.findall(r'data-src="https://images\.unsplash\.com(/[^"]+)"', html)
    assert len(srcs) == 7
    return set(srcs)


def serve(pages: dict[str, str]) -> LocalSite:
    files = ImagesOnDemand()
    site = LocalSite(files).start()
    base = site.url("")
    for path, html in pages.items():
        files[path] = ("text/html; charset=utf-8", _ABSOLUTE_HOST_RE.sub(base, html).encode())
    return site


def spider_classes() -> dict[str, type]:
    loader = SpiderLoader.from_settings(get_project_settings())
    return {name: loader.load(name) for name in loader.list()}


def test_every_spider_has_a_fixture_a_docstring_and_a_unique_name():
    classes = spider_classes()
    assert {"gallery", "wordpress", "lightgallery", "lazylisting"} <= set(classes)
    assert set(classes) == set(SPIDER_FIXTURES), "every spider needs an entry in SPIDER_FIXTURES"
    # The loader keeps one class per name; count names over every spider class defined.
    names = [cls.name for module in walk_modules_iter("imgcrawl.spiders") for cls in iter_spider_classes(module)]
    assert sorted(names) == sorted(set(names)) == sorted(classes)
    for name, cls in classes.items():
        assert cls.__doc__ and len(cls.__doc__.strip()) > 40, name


@pytest.mark.parametrize("name", sorted(SPIDER_FIXTURES))
def test_example_url_is_inside_the_spiders_domains(name):
    cls = spider_classes()[name]
    spider = cls() if getattr(cls, "start_urls", None) else cls(url=cls.example_url)
    assert spider.argument_error is None, spider.argument_error
    assert spider.start_urls
    assert url_is_from_any_domain(cls.example_url, spider.allowed_domains), (cls.example_url, spider.allowed_domains)


@pytest.mark.parametrize("name", sorted(SPIDER_FIXTURES))
def test_spider_crawls_its_fixture_end_to_end(name, tmp_path):
    start, pages, expected = SPIDER_FIXTURES[name]
    if expected is None:
        expected = _lightgallery_expected(pages[start])
    site = serve(pages)
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url(start)}", spider=name,
                           settings={"IMAGES_THUMBS": "{}"})
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    assert "Traceback" not in result.log
    manifest = {line["url"][len(site.url("")):]: line for line in result.manifest()}
    assert len(manifest) >= 1
    assert set(manifest) == expected
    for path, line in manifest.items():
        assert line["status"] == "downloaded", line
        assert (result.store / line["path"]).read_bytes() == site.files[path][1]
    fetched_images = {p for p in site.hits if _IMAGE_PATH_RE.search(urlsplit(p).path)}
    assert fetched_images == expected, "a thumbnail or placeholder was fetched"
