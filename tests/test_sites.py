"""Site profiles: loading and validation (pure), the spider's -a site/-a profile arguments,
and a real crawl driven by a user's profile file."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from parsel import Selector
from scrapy.http import HtmlResponse

from conftest import LocalSite, run_crawl
from imgcrawl import extract, sites
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
replace = ["next_page"]
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
    # With replace, next_page replaces the generic pagination: ?page=9 is not followed.
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


def test_docs_profile_example_is_a_valid_profile(tmp_path):
    docs = (Path(__file__).resolve().parent.parent / "docs" / "sites.md").read_text()
    toml = re.search(r"```toml\n(# mysite.toml\n.*?)```", docs, re.S).group(1)
    profile = sites.load_profile(write(tmp_path, toml))
    assert profile.items == "div.gallery figure" and profile.settings["DOWNLOAD_DELAY"] == 0.5
    assert profile.replace == {"next_page"} and profile.description
    assert profile.image_url("https://cdn.photos.example/uploads/a_thumb.jpg?w=300") == (
        "https://cdn.photos.example/uploads/a_full.jpg")
    # Every key the loader knows is in the example, and documented under its own heading.
    assert set(tomllib.loads(toml)) == sites.KNOWN_KEYS
    assert all(f"### `{key}`" in docs for key in sites.KNOWN_KEYS)


# Items as a responsive, lazy-loading gallery marks them up: a 320 px src and the 1280 px
# file in srcset (or data-srcset, lazily), and on some items the site's own zoom attribute.
RESPONSIVE_ITEMS = """<html><body><div class="gallery">
<figure class="ph"><img src="/img/a-320.jpg" srcset="/img/a-320.jpg 320w, /img/a-1280.jpg 1280w" alt="a"></figure>
<figure class="ph" data-zoom-src="/img/b-zoom.jpg"><img src="/img/b-320.jpg"
  srcset="/img/b-320.jpg 320w, /img/b-1280.jpg 1280w" alt="b"></figure>
<figure class="ph"><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="/img/c-320.jpg"
  data-srcset="/img/c-320.jpg 320w, /img/c-1280.jpg 1280w" alt="c"></figure>
</div></body></html>"""


def test_profile_image_attrs_extend_the_built_in_rules_in_a_crawl(tmp_path):
    """A profile adding its site's zoom attribute (and, as profiles used to, src as a last
    resort) still gets the 1280 px srcset candidate of items without it, lazy ones too."""
    profile = write(tmp_path, 'items = "figure.ph"\nimage_attrs = ["data-zoom-src", "src"]\n')
    files = {"/g/": ("text/html", RESPONSIVE_ITEMS.encode())}
    for n, name in enumerate(["a-320", "a-1280", "b-320", "b-1280", "b-zoom", "c-320", "c-1280"]):
        files[f"/img/{name}.jpg"] = ("image/jpeg", make_image(random.Random(n), "jpg", name))
    site = LocalSite(files).start()
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/g/')}", "-a", f"profile={profile}",
                           settings={"IMAGES_THUMBS": "{}"})
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    expected = ["/img/a-1280.jpg", "/img/b-zoom.jpg", "/img/c-1280.jpg"]
    lines = result.manifest()
    assert [line["url"][len(site.url("")):] for line in lines] == expected
    for line in lines:
        assert line["status"] == "downloaded"
        assert (result.store / line["path"]).read_bytes() == files[line["url"][len(site.url("")):]][1]
    assert {path for path in site.hits if path.startswith("/img/")} == set(expected)


def test_replace_makes_image_attrs_the_only_rules():
    selector = Selector(text=RESPONSIVE_ITEMS)
    profile = sites.parse_profile(
        {"items": "figure.ph", "image_attrs": ["data-zoom-src", "src"], "replace": ["image_attrs"]}, "x", "x.toml")
    spider = GallerySpider(url="https://x.example/g/", profile=None)
    spider.profile = profile
    response = HtmlResponse("https://x.example/g/", body=RESPONSIVE_ITEMS.encode())
    # Exactly the listed attributes, in their order: src's 320 px file, and nothing for the
    # lazy item, whose src is a placeholder.
    assert [c.url for c in spider.image_candidates(response)] == [
        "https://x.example/img/a-320.jpg", "https://x.example/img/b-zoom.jpg"]
    assert [c.url for c in extract.item_candidates(selector, "https://x.example/g/", "figure.ph",
                                                   ["src"], extend=True)] == [
        "https://x.example/img/a-1280.jpg", "https://x.example/img/b-1280.jpg", "https://x.example/img/c-1280.jpg"]


PAGINATED = (b'<html><body><a class="more" href="/g/more">more</a> <a rel="next" href="/g/?page=2">2</a>'
             b'<a class="photo" href="/p/1"><img src="/t/1.jpg"></a></body></html>')


@pytest.mark.parametrize("replace, pages", [
    ([], ["/g/more", "/g/?page=2"]),  # the profile's selector first, then the generic rules
    (["next_page"], ["/g/more"]),
])
def test_next_page_extends_the_generic_pagination_unless_replaced(replace, pages):
    spider = GallerySpider(url="https://x.example/g/")
    spider.profile = sites.parse_profile({"next_page": "a.more", "detail_page": "a.none",
                                          "replace": replace}, "x", "x.toml")
    response = HtmlResponse("https://x.example/g/", body=PAGINATED)
    assert list(spider.next_pages(response)) == [f"https://x.example{p}" for p in pages]
    # detail_page extends the same way: the generic rules still find the thumbnail's page.
    assert list(spider.detail_pages(response)) == ["https://x.example/p/1"]


def test_replace_names_only_keys_with_built_in_rules(tmp_path):
    with pytest.raises(sites.ProfileError, match=r"replace: 'items' has no built-in rules to replace; "
                                                  r"it may name image_attrs, next_page, detail_page"):
        sites.load_profile(write(tmp_path, 'items = "div"\nreplace = ["items"]\n'))


def test_builtin_profiles_are_read_from_a_zipped_package(tmp_path):
    """As scrapyd imports the project: from an egg, a zip file on sys.path."""
    egg = tmp_path / "project.egg"
    package = Path(sites.__file__).resolve().parent.parent
    with zipfile.ZipFile(egg, "w") as zf:
        for path in package.rglob("*"):
            if path.suffix in (".py", ".toml"):
                zf.write(path, Path("imgcrawl") / path.relative_to(package))
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from imgcrawl import sites; "
             "assert sites.__file__.startswith(sys.argv[1]), sites.__file__; "
             "print(sorted(sites.builtin_profiles()), sites.find_profile('wordpress').description)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", probe, str(egg)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['wordpress'] WordPress gallery blocks and classic galleries"
