"""The contact sheet (index.html in the store), checked in a real headless Chromium."""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from conftest import REPO, LocalSite, run_crawl
from imgcrawl import contact_sheet
from imgcrawl.demo import make_image

CHROMIUM = "/usr/bin/chromium"  # Debian's; .ci/run installs it
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


def open_sheet(browser, path: Path, requests: list[str]):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    return page


def local_path(url: str) -> Path:
    parts = urlsplit(url)
    assert parts.scheme == "file", url
    return Path(unquote(parts.path))


def test_contact_sheet_of_a_crawl(demo_site, tmp_path, browser):
    result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}")
    assert result.returncode == 0, result.log[-3000:]
    sheet = result.store / "index.html"
    assert f"Contact sheet: {sheet.as_uri()}" in result.log
    manifest = {line["path"]: line for line in result.manifest() if line["status"] == "downloaded"}
    assert len(manifest) == 18

    requests: list[str] = []
    page = open_sheet(browser, sheet, requests)
    assert page.inner_text("#count") == "18 images"
    assert page.inner_text("#where") == "page 1 of 1"
    # Failures: counted and listed with reason.
    assert page.inner_text("#failures summary") == "1 failed"
    failures = page.text_content("#failures ul")  # inside a closed <details>
    assert demo_site.url("/img/broken.jpg") in failures and "undecodable" in failures
    # Grouped by the page each image was found on.
    groups = page.locator("main h2").all_inner_texts()
    assert demo_site.url("/gallery/") in groups and len(groups) == len(set(groups)) > 1

    tiles = page.locator("main .grid a").all()
    assert len(tiles) == 18
    for tile in tiles:
        img = tile.locator("img")
        assert img.get_attribute("loading") == "lazy"
        tile.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(), timeout=10_000)
        # The thumbnail shown is the stored thumbnail, the link the stored original (relative).
        href = tile.get_attribute("href")
        assert not href.startswith(("/", "http", "file")), href
        line = manifest[href]
        original = local_path(tile.evaluate("a => a.href"))
        assert hashlib.sha256(original.read_bytes()).hexdigest() == line["sha256"]
        assert img.get_attribute("src") == line["thumbs"]["small"]
        assert img.evaluate("img => img.naturalWidth") == Image.open(result.store / line["thumbs"]["small"]).width
        # Size and format on hover.
        info = f"{line['width']}\u00d7{line['height']} {line['format']}"
        assert tile.get_attribute("title").startswith(info)
    page.mouse.wheel(0, -10_000)
    tiles[0].hover()
    assert tiles[0].locator("span").is_visible()
    assert tiles[0].locator("span").inner_text().startswith(f"{manifest[tiles[0].get_attribute('href')]['width']}\u00d7")
    # No server, no network: everything came from the store on disk.
    assert requests and all(url.startswith("file://") for url in requests), requests
    assert all(local_path(url).is_relative_to(result.store) for url in requests)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "contact-sheet.png"), full_page=True)
    page.close()


def test_contact_sheet_keeps_page_order_when_downloads_finish_out_of_order(tmp_path, browser):
    """Each page's first image is served slowly, so it is stored last; the manifest and the
    sheet still show every page's images in their order on the page, pages in crawl order."""
    rng = random.Random(11)
    files = {}
    for page, count in ((1, 4), (2, 3)):
        imgs = "".join(f'<img src="/img/p{page}-{i}.jpg" alt="p{page}-{i}">' for i in range(count))
        more = '<a rel="next" href="/g/?page=2">next</a>' if page == 1 else ""
        files[f"/g/?page={page}"] = ("text/html", f"<html><body>{imgs}{more}</body></html>".encode())
        for i in range(count):
            files[f"/img/p{page}-{i}.jpg"] = ("image/jpeg", make_image(rng, "jpg", f"p{page}-{i}"))
    site = LocalSite(files, delays={"/img/p1-0.jpg": 1.5, "/img/p2-0.jpg": 1.5}).start()
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/g/?page=1')}")
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    # The crawl's journal is in the order downloads finished: each first image after its page's others.
    finished = [line["alt"] for line in result.crawl_lines()]
    assert sorted(finished) == ["p1-0", "p1-1", "p1-2", "p1-3", "p2-0", "p2-1", "p2-2"]
    assert finished.index("p1-0") > finished.index("p1-3") and finished.index("p2-0") > finished.index("p2-2")
    # The merged manifest is in page order.
    assert [line["alt"] for line in result.manifest()] == ["p1-0", "p1-1", "p1-2", "p1-3", "p2-0", "p2-1", "p2-2"]

    page = open_sheet(browser, result.store / "index.html", [])
    assert page.locator("main h2").all_inner_texts() == [site.url("/g/?page=1"), site.url("/g/?page=2")]
    shown = [grid.locator("img").evaluate_all("imgs => imgs.map(img => img.alt)")
             for grid in page.locator("main .grid").all()]
    assert shown == [["p1-0", "p1-1", "p1-2", "p1-3"], ["p2-0", "p2-1", "p2-2"]]
    page.close()


def sheet_records(sheet: Path) -> list[dict]:
    data = sheet.read_text(encoding="utf-8").split('<script id="data" type="application/json">', 1)[1]
    return json.loads(data.split("</script>", 1)[0])


def test_the_sheet_and_the_manifest_show_the_whole_collection_after_a_partial_recrawl(demo_site, tmp_path):
    """The whole gallery, then its first page again: the manifest keeps one line per image
    (its latest), the sheet shows every stored image, in page order, and says it is all crawls."""
    first = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}")
    assert first.returncode == 0, first.log[-3000:]
    again = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}", "-a", "max_pages=1")
    assert again.returncode == 0, again.log[-3000:]
    lines = again.manifest()
    assert len(lines) == len({line["url"] for line in lines}) == 19  # 18 photos + the broken one
    recrawled = {line["url"] for line in again.crawl_lines()}
    assert 0 < len(recrawled) < 19
    assert {line["url"]: line["status"] for line in lines if line["url"] in recrawled} == {
        url: "uptodate" for url in recrawled}
    assert len(list((again.store / "crawls").glob("manifest-*.jsonl"))) == 2  # each crawl's lines, as history
    # Page order: each page's lines together, by position, pages as first crawled.
    pages = [line["page_url"] for line in lines]
    assert pages == sorted(pages, key=pages.index)
    for page in set(pages):
        positions = [line["position"] for line in lines if line["page_url"] == page]
        assert positions == sorted(positions)
    sheet = again.store / "index.html"
    records = sheet_records(sheet)
    assert [record["u"] for record in records] == [line["url"] for line in lines if line["status"] != "failed"]
    assert ">18 images<" in sheet.read_text() and ">all crawls<" in sheet.read_text()


def test_contact_sheet_with_20000_images_stays_light(tmp_path, browser):
    """20,000 images: one page of thumbnails in the DOM at a time, all reachable."""
    store = tmp_path / "store"
    (store / "thumbs").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 80, 40)).save(store / "thumbs" / "t.jpg")
    records = [
        contact_sheet.record_for({
            "url": f"https://example.com/img/{n}.jpg", "page_url": f"https://example.com/page/{n // 50}",
            "status": "downloaded", "path": f"full/{n}.jpg", "thumbs": {"small": "thumbs/t.jpg"},
            "width": 640, "height": 480, "format": "JPEG", "bytes": 12345, "alt": f"<b>photo</b> {n}",
        })
        for n in range(20_000)
    ]
    records.append(contact_sheet.record_for({"url": "https://example.com/x", "status": "failed", "reason": "http-404"}))
    # An image of the first page that finished last is shown with its page, not at the end.
    records.append(contact_sheet.record_for({
        "url": "https://example.com/img/late.jpg", "page_url": "https://example.com/page/0",
        "status": "downloaded", "path": "full/late.jpg", "thumbs": {"small": "thumbs/t.jpg"},
    }))
    sheet = contact_sheet.write(records, store / "index.html", "big </script> crawl")
    started = time.monotonic()
    page = open_sheet(browser, sheet, [])
    page.wait_for_function("document.querySelectorAll('main img').length > 0", timeout=20_000)
    print(f"20,000-image sheet: {sheet.stat().st_size / 1e6:.1f} MB, shown in {time.monotonic() - started:.2f} s")
    pages = -(-20_001 // contact_sheet.PAGE_SIZE)
    assert page.inner_text("#count") == "20001 images"
    assert page.inner_text("#where") == f"page 1 of {pages}"
    assert page.locator("main img").count() == contact_sheet.PAGE_SIZE
    assert page.title() == "big </script> crawl"  # the data cannot break out of its <script>
    assert page.locator("main img").first.get_attribute("alt") == "<b>photo</b> 0"
    assert page.locator("main .grid").first.locator("a").count() == 51  # page/0's 50 + the late one
    assert page.locator("main .grid a").nth(50).get_attribute("href") == "full/late.jpg"
    page.click("#next")
    assert page.inner_text("#where") == f"page 2 of {pages}"
    assert page.locator("main a").first.get_attribute("href") == f"full/{contact_sheet.PAGE_SIZE - 1}.jpg"
    page.goto(f"{sheet.as_uri()}#page={pages}")
    page.wait_for_function(f"document.getElementById('where').textContent === 'page {pages} of {pages}'")
    last = 20_001 - (pages - 1) * contact_sheet.PAGE_SIZE
    assert page.locator("main img").count() == last
    assert page.locator("main a").last.get_attribute("href") == "full/19999.jpg"
    assert page.locator("main h2").last.inner_text() == "https://example.com/page/399"
    assert page.is_disabled("#next") and not page.is_disabled("#prev")
    assert page.inner_text("#failures summary") == "1 failed"
    page.close()


def test_svg_tile_shows_the_svg_but_never_runs_its_script(tmp_path, browser):
    """A crawled SVG with a script: the sheet shows it (through <img>) and clicking its tile
    opens the sheet's viewer, never the SVG as a page, so the script never runs."""
    rng = random.Random(2)
    site = LocalSite({}).start()
    marker = site.url("/pwned")
    # Runs only when the SVG is opened as a document: renames the page and calls home.
    evil = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="80">'
        '<rect width="120" height="80" fill="#c33"/>'
        f'<script>document.title = "PWNED"; fetch("{marker}"); new Image().src = "{marker}?img";</script>'
        "</svg>"
    ).encode()
    site.files.update({
        "/g/": ("text/html", b'<html><body><img src="/img/photo.jpg" alt="photo">'
                             b'<img src="/img/evil.svg" alt="evil"></body></html>'),
        "/img/photo.jpg": ("image/jpeg", make_image(rng, "jpg", "photo")),
        "/img/evil.svg": ("image/svg+xml", evil),
    })
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/g/')}")
        assert result.returncode == 0, result.log[-3000:]
        svg = next(line for line in result.manifest() if line["url"].endswith(".svg"))
        assert svg["format"] == "SVG" and (result.store / svg["path"]).read_bytes() == evil
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        try:
            # The marker works: the stored SVG opened as a page runs its script.
            probe = context.new_page()
            probe.goto((result.store / svg["path"]).as_uri())
            probe.wait_for_function("document.title === 'PWNED'", timeout=5_000)
            deadline = time.monotonic() + 5
            while not site.hits["/pwned"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert site.hits["/pwned"], "the SVG's script did not call home when opened as a page"
            probe.close()
            site.hits.clear()

            page = context.new_page()
            page.goto((result.store / "index.html").as_uri())
            tile = page.locator("main .grid a", has=page.locator("img[alt=evil]"))
            img = tile.locator("img")
            assert img.get_attribute("src") == svg["path"]  # shown, through <img>
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(),
                                   timeout=10_000)
            tile.click()
            page.wait_for_timeout(500)  # time for a script, had one run, to rename and call home
            assert page.title() != "PWNED" and page.url == (result.store / "index.html").as_uri()
            assert [p.url for p in context.pages] == [page.url]  # nothing opened elsewhere
            assert not site.hits["/pwned"] and not site.hits["/pwned?img"]
            # It opened in the sheet's viewer, through <img>; the tile is not a link to the SVG.
            shown = page.locator("#viewer img")
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=shown.element_handle(),
                                   timeout=10_000)
            assert page.locator("#viewer").is_visible() and shown.get_attribute("src") == svg["path"]
            assert tile.get_attribute("href") is None
            page.keyboard.press("Escape")
            assert not page.locator("#viewer").is_visible()
            # The raster original is still a plain link to the stored file.
            photo = next(line for line in result.manifest() if line["url"].endswith(".jpg"))
            assert page.locator("main .grid a", has=page.locator("img[alt=photo]")).get_attribute("href") == photo["path"]
        finally:
            context.close()
    finally:
        site.stop()


def test_failure_list_links_only_http_urls(tmp_path):
    records = [contact_sheet.record_for({"url": url, "page_url": page, "status": "failed", "reason": "x"})
               for url, page in (("javascript:alert(1)", "file:///etc/passwd"), ("https://a.example/1.jpg", ""))]
    sheet = contact_sheet.write(records, tmp_path / "index.html", "t").read_text()
    assert 'href="javascript:' not in sheet and 'href="file:' not in sheet and "javascript:alert(1)" in sheet
    assert '<a href="https://a.example/1.jpg">' in sheet
