"""Site profiles: loading and validation (pure), the spider's -a site/-a profile arguments,
and a real crawl driven by a user's profile file."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from conftest import LocalSite, run_crawl
from imgcrawl import sites
from imgcrawl.demo import make_image
from imgcrawl.spiders.gallery import GallerySpider
from imgcrawl.spiders.wordpress import WordPressGallerySpider


def write(tmp_path, text: str, name: str = "mysite.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_profiles_are_found_by_name():
    assert "wordpress" in sites.builtin_profiles()
    profile = sites.find_profile("wordpress")
    assert profile.name == "wordpress" and profile.items and profile.image_attrs[0] == "data-full-url"


def test_unknown_site_names_the_known_ones():
    with pytest.raises(sites.ProfileError, match=r"^unknown site profile nope: known are .*wordpress"):
        sites.find_profile("nope")


@pytest.mark.parametrize("text, message", [
    ('itmes = "div"', r"unknown key 'itmes'; known are"),
    ('items = "div[[["', r"items: bad selector"),
    ('exclude = ["(unclosed"]', r"exclude: bad regex"),
    ('rewrite = [["a"]]', r"rewrite must be a list of"),
    ('domains = "x.example"', r"domains must be a list of strings"),
    ("items = 3", r"items must be a string"),
    ("settings = 1", r"\[settings\] must be a table"),
    ('name = "x', r"is not valid TOML"),
])
def test_bad_profiles_give_one_line_naming_the_problem(tmp_path, text, message):
    with pytest.raises(sites.ProfileError, match=message) as info:
        sites.load_profile(write(tmp_path, text))
    assert "\n" not in str(info.value) and "mysite.toml" in str(info.value)


def test_missing_profile_file(tmp_path):
    with pytest.raises(sites.ProfileError, match="cannot read profile"):
        sites.load_profile(tmp_path / "nope.toml")


def test_profile_rewrites_and_filters_image_urls(tmp_path):
    profile = sites.load_profile(write(tmp_path, r'''
rewrite = [["_thumb\\.", "_full."], ["\\?w=\\d+$", ""]]
include = ["/media/"]
exclude = ["/media/ads/"]
'''))
    assert profile.name == "mysite"
    assert profile.image_url("https://x.example/media/a_thumb.jpg?w=300") == "https://x.example/media/a_full.jpg"
    assert profile.image_url("https://x.example/static/logo.png") is None
    assert profile.image_url("https://x.example/media/ads/b_thumb.jpg") is None


@pytest.mark.parametrize("kwargs, message", [
    ({"site": "nope"}, "bad -a site='nope': unknown site profile nope: known are wordpress"),
    ({"site": "wordpress", "profile": "x.toml"}, "give -a site=NAME or -a profile=FILE, not both"),
    ({"profile": "/nonexistent/site.toml"}, "bad -a profile='/nonexistent/site.toml': cannot read profile"),
])
def test_spider_rejects_bad_site_arguments_in_one_line(kwargs, message):
    spider = GallerySpider(url="https://x.example/g/", **kwargs)
    assert spider.argument_error and message in spider.argument_error and "e.g." in spider.argument_error
    assert "\n" not in spider.argument_error
    assert spider.start_urls == []


def test_profile_start_urls_and_domains_apply_when_no_url_is_given(tmp_path):
    path = write(tmp_path, 'domains = ["cdn.x.example"]\nstart_urls = ["https://x.example/g/"]\n')
    spider = GallerySpider(profile=str(path))
    assert spider.argument_error is None
    assert spider.start_urls == ["https://x.example/g/"]
    assert spider.allowed_domains == ["cdn.x.example", "x.example"]
    # A subclass naming a built-in profile gets it without arguments.
    assert WordPressGallerySpider().profile.name == "wordpress"


def _tiles(page: int) -> bytes:
    tiles = "".join(
        f'<div class="tile"><img src="/media/{page}-{i}_thumb.jpg?w=300" alt="t{page}{i}"></div>'
        for i in range(1, 4)
    )
    ad = '<div class="tile"><img src="/media/ads/banner_thumb.jpg"></div>'
    more = '<a class="load-more" href="/g/2">Load more photos</a>' if page == 1 else ""
    return (f"<html><body><img src='/static/logo.png'><div class='grid'>{tiles}{ad}</div>"
            f"<a href='/g/?page=9'>9</a>{more}</body></html>").encode()


def test_crawl_with_a_user_profile_file(tmp_path):
    profile = write(tmp_path, r'''
items = ".tile"
image_attrs = ["data-full", "src"]
next_page = "a.load-more"
rewrite = [["_thumb\\.", "_full."], ["\\?w=\\d+$", ""]]
exclude = ["/ads/"]
[settings]
DOWNLOAD_DELAY = 0.01
CONCURRENT_REQUESTS_PER_DOMAIN = 3
''')
    files = {"/g/": ("text/html", _tiles(1)), "/g/2": ("text/html", _tiles(2))}
    expected = {f"/media/{p}-{i}_full.jpg" for p in (1, 2) for i in range(1, 4)}
    for n, path in enumerate(sorted(expected)):
        files[path] = ("image/jpeg", make_image(random.Random(n), "jpg", path))
    site = LocalSite(files).start()
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/g/')}", "-a", f"profile={profile}",
                           settings={"IMAGES_THUMBS": "{}", "CONCURRENT_REQUESTS_PER_DOMAIN": 5})
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    manifest = result.manifest()
    assert {line["url"][len(site.url("")):] for line in manifest} == expected
    for line in manifest:
        assert line["status"] == "downloaded"
        assert (result.store / line["path"]).read_bytes() == files[line["url"][len(site.url("")):]][1]
    # next_page replaces the generic pagination: ?page=9 is not followed.
    assert set(site.hits) - expected == {"/robots.txt", "/g/", "/g/2"}
    # The profile's settings apply; -s on the command line wins over them.
    overridden = re.search(r"Overridden settings:\n(\{.*?\})", result.log, re.S).group(1)
    assert "'DOWNLOAD_DELAY': 0.01" in overridden
    assert "'CONCURRENT_REQUESTS_PER_DOMAIN': '5'" in overridden


def test_crawl_with_an_unknown_site_stops_with_one_line(tmp_path):
    result = run_crawl(tmp_path, "-a", "url=http://127.0.0.1:9/g/", "-a", "site=nope")
    errors = [line for line in result.log.splitlines() if " ERROR: " in line]
    assert len(errors) == 1 and "unknown site profile nope: known are wordpress" in errors[0], errors
    assert "Traceback" not in result.log
    assert "'finish_reason': 'bad_argument'" in result.log


def test_documented_profile_example_is_a_valid_profile(tmp_path):
    section = (Path(__file__).resolve().parent.parent / "docs" / "add-your-site.md").read_text()
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    profile = sites.load_profile(write(tmp_path, toml))
    assert profile.items == "div.gallery figure" and profile.settings["DOWNLOAD_DELAY"] == 0.5
    assert profile.image_url("https://cdn.photos.example/uploads/a_thumb.jpg?w=300") == (
        "https://cdn.photos.example/uploads/a_full.jpg")
