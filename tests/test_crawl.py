"""End to end: a real ``scrapy crawl gallery`` against the demo gallery on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import random

from PIL import Image

from conftest import LocalSite, run_crawl, self_signed_tls
from imgcrawl.demo import build_gallery, make_image


# The demo gallery's full-size images: what a correct crawl must store.
def expected_images(site) -> dict[str, bytes]:
    return {
        site.url(path): body
        for path, (ctype, body) in site.files.items()
        if path.startswith("/img/photo") and "-small" not in path and "-thumb" not in path
    }


def test_crawl_stores_every_image_byte_exact_with_thumbnails(demo_site, tmp_path):
    result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}")
    assert result.returncode == 0, result.log[-3000:]
    manifest = {line["url"]: line for line in result.manifest()}
    expected = expected_images(demo_site)
    assert len(expected) == 18
    for url, body in expected.items():
        line = manifest[url]
        assert line["status"] == "downloaded", line
        stored = (result.store / line["path"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(body).hexdigest() == line["sha256"]
        real_format = Image.open(result.store / line["path"]).format
        assert line["format"] == real_format
        assert line["path"].endswith({"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp"}[real_format])
        with Image.open(result.store / line["thumbs"]["small"]) as thumb:
            assert thumb.format == "JPEG"
            assert max(thumb.size) == 256  # demo images are all larger than 256 px
        with Image.open(result.store / line["path"]) as original:
            assert (line["width"], line["height"]) == original.size
        assert line["page_url"].startswith(demo_site.url("/"))
        assert line["alt"].startswith("Photo ")
    # Thumbnails of detail pages and srcset's small candidates are not taken as images.
    assert not any("-thumb" in url or "-small" in url for url in manifest)
    # The broken image: counted, reported once with its reason, recorded, crawl finished.
    broken = manifest[demo_site.url("/img/broken.jpg")]
    assert broken["status"] == "failed" and broken["reason"] == "undecodable"
    warnings = [line for line in result.log.splitlines() if "broken.jpg" in line and "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert "Traceback" not in result.log
    assert "'imgcrawl/failed/undecodable': 1" in result.log
    assert "'finish_reason': 'finished'" in result.log
    # Each image fetched exactly once; every page once.
    for path in [p for p in demo_site.files if p.startswith("/img/photo")]:
        assert demo_site.hits[path] <= 1, path


def test_crawl_over_https_keeps_its_connections(tmp_path):
    """imgcrawl's download handler over TLS: every image stored byte-exact, connections reused."""
    site = LocalSite(build_gallery(), tls=self_signed_tls(tmp_path)).start()
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/gallery/')}")
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    manifest = {line["url"]: line for line in result.manifest()}
    expected = expected_images(site)
    assert expected and all(url.startswith("https://127.0.0.1:") for url in expected)
    for url, body in expected.items():
        assert (result.store / manifest[url]["path"]).read_bytes() == body
    requests = sum(site.hits.values())
    assert site.connections <= 16 < requests  # kept alive: at most one per slot of per-host concurrency


def test_recrawl_downloads_nothing_already_stored(demo_site, tmp_path):
    url = demo_site.url("/gallery/")
    first = run_crawl(tmp_path, "-a", f"url={url}")
    assert first.returncode == 0
    hits_after_first = sum(n for p, n in demo_site.hits.items() if p.startswith("/img/photo"))
    second = run_crawl(tmp_path, "-a", f"url={url}")
    hits_after_second = sum(n for p, n in demo_site.hits.items() if p.startswith("/img/photo"))
    assert hits_after_second == hits_after_first, "already-stored images were fetched again"
    assert "'file_status_count/uptodate': 18" in second.log


def test_thumbs_setting_as_json_string(demo_site, tmp_path):
    result = run_crawl(
        tmp_path, "-a", f"url={demo_site.url('/gallery/')}", "-a", "max_images=3",
        settings={"IMAGES_THUMBS": json.dumps({"tiny": [64, 48], "mid": [300, 300]})},
    )
    assert result.returncode == 0, result.log[-3000:]
    lines = [line for line in result.manifest() if line["status"] == "downloaded"]
    assert len(lines) == 3
    for line in lines:
        assert set(line["thumbs"]) == {"tiny", "mid"}
        with Image.open(result.store / line["thumbs"]["tiny"]) as tiny:
            assert tiny.size[0] <= 64 and tiny.size[1] <= 48
            assert tiny.size[0] == 64 or tiny.size[1] == 48  # fitted to the box, aspect kept


def test_max_pages_bounds_the_crawl(demo_site, tmp_path):
    result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}", "-a", "max_pages=1")
    assert result.returncode == 0
    pages = [p for p in demo_site.hits if p.startswith("/gallery") or p.startswith("/photo")]
    assert pages == ["/gallery/"]


def cyclic_gallery(pages: int) -> dict[str, tuple[str, bytes]]:
    """``pages`` numbered pages; page N links back to every earlier page (each link three
    times) before linking to page N + 1, and the last page back to the first: cycles, and
    every page after the first repeats links to pages already crawled. One image each."""
    rng = random.Random(5)
    files = {}
    for n in range(1, pages + 1):
        back = "".join(f'<a href="/g/?page={k}">{k}</a>' * 3 for k in range(1, n))
        forward = f'<a href="/g/?page={n % pages + 1}">next</a>'
        files[f"/img/{n}.jpg"] = ("image/jpeg", make_image(rng, "jpg", str(n)))
        files[f"/g/?page={n}"] = (
            "text/html", f'<html><body><img src="/img/{n}.jpg">{back}{forward}</body></html>'.encode()
        )
    return files


def test_max_pages_counts_distinct_pages_only(tmp_path):
    """Links back to pages already crawled are duplicates: they use none of max_pages."""
    site = LocalSite(cyclic_gallery(pages=12)).start()
    try:
        limited = run_crawl(tmp_path, "-a", f"url={site.url('/g/?page=1')}", "-a", "max_pages=5",
                            store=tmp_path / "limited", settings={"IMAGES_THUMBS": "{}"})
        limited_hits = {p: n for p, n in site.hits.items() if p.startswith("/g/")}
        site.hits.clear()
        everything = run_crawl(tmp_path, "-a", f"url={site.url('/g/?page=1')}",
                               store=tmp_path / "all", settings={"IMAGES_THUMBS": "{}"})
        all_hits = {p: n for p, n in site.hits.items() if p.startswith("/g/")}
    finally:
        site.stop()
    assert limited.returncode == 0, limited.log[-3000:]
    assert limited_hits == {f"/g/?page={n}": 1 for n in range(1, 6)}
    assert len(limited.manifest()) == 5
    assert everything.returncode == 0, everything.log[-3000:]
    assert all_hits == {f"/g/?page={n}": 1 for n in range(1, 13)}
    assert len(everything.manifest()) == 12


def test_max_pages_holds_when_spider_output_is_read_ahead(tmp_path):
    """Under the asyncio reactor Scrapy reads a callback's output ahead of scheduling it:
    the first page's eleven links are all made before any is scheduled, and still only
    max_pages pages are fetched."""
    rng = random.Random(6)
    links = "".join(f'<a href="/g/?page={n}">{n}</a>' for n in range(1, 13))
    files = {}
    for n in range(1, 13):
        files[f"/img/{n}.jpg"] = ("image/jpeg", make_image(rng, "jpg", str(n)))
        files[f"/g/?page={n}"] = ("text/html", f'<html><body><img src="/img/{n}.jpg">{links}</body></html>'.encode())
    site = LocalSite(files).start()
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/g/?page=1')}", "-a", "max_pages=5", settings={
            "IMAGES_THUMBS": "{}", "TWISTED_REACTOR": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
            "LOG_LEVEL": "DEBUG",  # for the "Using reactor" line
        })
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    assert "Using reactor: twisted.internet.asyncioreactor.AsyncioSelectorReactor" in result.log
    pages = {p: n for p, n in site.hits.items() if p.startswith("/g/")}
    assert len(pages) == 5 and set(pages.values()) == {1}, pages


def test_bad_argument_gives_one_line_and_no_crawl(demo_site, tmp_path):
    for args, expected in (
        ((), "missing -a url=..."),
        (("-a", "url=not-a-url"), "bad -a url='not-a-url'"),
        (("-a", f"url={demo_site.url('/gallery/')}", "-a", "max_images=lots"), "bad -a max_images='lots'"),
    ):
        result = run_crawl(tmp_path, *args)
        errors = [line for line in result.log.splitlines() if " ERROR: " in line]
        assert len(errors) == 1 and expected in errors[0] and "e.g." in errors[0], errors
        assert "Traceback" not in result.log
        assert "'finish_reason': 'bad_argument'" in result.log
    assert not any(p.startswith("/gallery") for p in demo_site.hits)


def long_gallery(pages: int, album_chain: int) -> dict[str, tuple[str, bytes]]:
    """``pages`` listing pages joined only by rel=next (a chain, the deepest case), and from
    page 1 a chain of ``album_chain`` album pages, each linking to the next; one image each."""
    rng = random.Random(3)
    files = {}

    def page(path: str, image: str, extra: str = "") -> None:
        files[image] = ("image/jpeg", make_image(rng, "jpg", image))
        files[path] = ("text/html", f'<html><head>{extra}</head><body><img src="{image}"></body></html>'.encode())

    for n in range(1, pages + 1):
        nxt = f'<link rel="next" href="/list/?page={n + 1}">' if n < pages else ""
        album = '</head><body><a href="/album/1">Albums</a>' if n == 1 else ""
        page(f"/list/?page={n}", f"/img/list{n}.jpg", nxt + album)
    for n in range(1, album_chain + 1):
        page(f"/album/{n}", f"/img/album{n}.jpg", f'</head><body><a href="/album/{n + 1}">Album {n + 1}</a>')
    return files


def test_pagination_is_followed_to_the_end_and_detail_links_to_their_depth(tmp_path):
    site = LocalSite(long_gallery(pages=30, album_chain=6)).start()
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/list/?page=1')}",
                           settings={"IMGCRAWL_DETAIL_DEPTH": 2, "IMAGES_THUMBS": "{}"})
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    # 30 pages in a rel=next chain: all crawled (DEPTH_LIMIT-style counting would stop early).
    assert all(site.hits[f"/list/?page={n}"] == 1 for n in range(1, 31))
    # Album links: two hops from the listing, no further.
    assert [site.hits[f"/album/{n}"] for n in range(1, 7)] == [1, 1, 0, 0, 0, 0]
    stored = {line["url"] for line in result.manifest() if line["status"] == "downloaded"}
    assert len(stored) == 32
