"""-a render=browser: galleries built by JavaScript, rendered in the system Chromium.

The test site (below, no external assets) has three galleries a static crawl finds nothing
in: an empty shell filled from a JSON API with infinite scroll, images whose src a script
sets from a data attribute, and a page whose "Load more" button fetches more images.
Crawls are real ``scrapy crawl`` subprocesses against 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import CRAWL_TIMEOUT, LocalSite, answer, crawl_command, run_crawl
from parsel import Selector

from imgcrawl import render, sites
from imgcrawl.demo import make_image

SHELL_PAGES = 3  # JSON API pages, 4 photos each, the next one fetched on scroll
SHELL = [f"shell{i}" for i in range(SHELL_PAGES * 4)]
SCRIPTED = [f"scripted{i}" for i in range(3)]
MORE = [f"more{i}" for i in range(7)]  # 2 on the page, 2 per click (2 clicks), 1 on page 2

SHELL_HTML = """<!doctype html><html><head><title>Shell</title>
<style>.tile { display: block; height: 600px }</style></head>
<body><div id="app"></div><script src="/app.js"></script></body></html>"""
APP_JS = """let next = 1, loading = false;
async function load() {
  if (next === null || loading) return;
  loading = true;
  const data = await (await fetch('/api/photos?page=' + next)).json();
  for (const photo of data.photos) {
    const link = document.createElement('a');
    link.href = photo.full; link.className = 'tile';
    const img = document.createElement('img');
    img.src = photo.thumb; img.alt = photo.title;
    link.appendChild(img);
    document.getElementById('app').appendChild(link);
  }
  next = data.next; loading = false;
}
window.addEventListener('scroll', () => {
  if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 200) load();
});
load();"""
SCRIPTED_HTML = """<!doctype html><html><body><div class="grid">{imgs}</div>
<script>for (const img of document.querySelectorAll('img[data-key]')) img.src = atob(img.dataset.key);</script>
</body></html>"""
MORE_HTML = """<!doctype html><html><body><div id="list">{imgs}</div>
<button id="more">Load more</button> <a class="next" href="/more/2">Next</a>
<script>
let offset = 2;
document.getElementById('more').addEventListener('click', async () => {
  const html = await (await fetch('/more/items?offset=' + offset)).text();
  document.getElementById('list').insertAdjacentHTML('beforeend', html);
  offset += 2;
  if (offset >= 6) document.getElementById('more').remove();
});
</script></body></html>"""


def photo(name: str) -> bytes:
    return make_image(random.Random(name), "jpg", name)


def build_site() -> LocalSite:
    files: dict[str, tuple[str, bytes]] = {}
    for name in SHELL + SCRIPTED + MORE:
        files[f"/photos/{name}.jpg"] = ("image/jpeg", photo(name))
        files[f"/thumbs/{name}.jpg"] = ("image/jpeg", photo(name + "-thumb"))
    files["/shell/"] = ("text/html", SHELL_HTML.encode())
    files["/app.js"] = ("application/javascript", APP_JS.encode())
    for page in range(1, SHELL_PAGES + 1):
        names = SHELL[(page - 1) * 4: page * 4]
        data = {"photos": [{"full": f"/photos/{n}.jpg", "thumb": f"/thumbs/{n}.jpg", "title": n} for n in names],
                "next": page + 1 if page < SHELL_PAGES else None}
        files[f"/api/photos?page={page}"] = ("application/json", json.dumps(data).encode())
    keys = "".join(f'<img data-key="{base64.b64encode(f"/photos/{n}.jpg".encode()).decode()}">' for n in SCRIPTED)
    files["/scripted/"] = ("text/html", SCRIPTED_HTML.replace("{imgs}", keys).encode())
    files["/more/"] = ("text/html", MORE_HTML.replace("{imgs}", imgs(MORE[:2])).encode())
    files["/more/items?offset=2"] = ("text/html", imgs(MORE[2:4]).encode())
    files["/more/items?offset=4"] = ("text/html", imgs(MORE[4:6]).encode())
    files["/more/2"] = ("text/html", f"<html><body>{imgs(MORE[6:])}</body></html>".encode())
    return LocalSite(files)


def imgs(names) -> str:
    return "".join(f'<img src="/photos/{n}.jpg" alt="{n}">' for n in names)


@pytest.fixture
def site():
    served = build_site().start()
    yield served
    served.stop()


def marked_processes(mark: str) -> list[tuple[int, str]]:
    """Live processes (pid, command) whose environment carries ``mark``: the crawl and every
    process it started (Playwright's driver, Chromium and its helpers) inherit it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mark.encode() not in (entry / "environ").read_bytes():
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone, or not ours to read
        found.append((int(entry.name), command[:120]))
    return found


def assert_none_left(mark: str) -> None:
    """Nothing marked is alive (Chromium's helpers exit a moment after the browser: 5 s at most)."""
    deadline = time.monotonic() + 5
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"left behind: {left}"


def crawl(tmp_path: Path, urls: str, *args: str, settings: dict | None = None):
    """A crawl whose processes carry a mark; returns (result, mark)."""
    mark = f"IMGCRAWL_TEST_MARK_{uuid.uuid4().hex}"
    os.environ[mark] = "1"
    try:
        result = run_crawl(tmp_path, "-a", f"url={urls}", *args, settings={"IMGCRAWL_WORKER_POOL": "thread",
                                                                         **(settings or {})})
    finally:
        del os.environ[mark]
    return result, mark


def stored(result) -> dict[str, dict]:
    return {line["url"]: line for line in result.manifest() if line["status"] == "downloaded"}


def test_rendered_crawl_finds_every_full_size_image_once_byte_exact(site, tmp_path):
    urls = ",".join(site.url(p) for p in ("/shell/", "/scripted/", "/more/"))
    result, mark = crawl(tmp_path, urls, "-a", "render=browser", settings={"LOG_LEVEL": "DEBUG"})
    assert result.returncode == 0, result.log[-3000:]
    assert "Using reactor: twisted.internet.asyncioreactor.AsyncioSelectorReactor" in result.log
    lines = stored(result)
    expected = {site.url(f"/photos/{n}.jpg"): n for n in SHELL + SCRIPTED + MORE}
    assert sorted(lines) == sorted(expected)  # every full-size image; no thumbnail
    for url, name in expected.items():
        body = photo(name)
        assert lines[url]["sha256"] == hashlib.sha256(body).hexdigest()
        assert (result.store / lines[url]["path"]).read_bytes() == body
        # Fetched once, by Scrapy: the browser fetched no image file, not even the thumbnails.
        assert site.hits[f"/photos/{name}.jpg"] == 1
        assert site.hits[f"/thumbs/{name}.jpg"] == 0
    assert site.hits["/more/2"] == 1  # the rendered page's pagination link was followed
    assert [site.hits[f"/api/photos?page={p}"] for p in range(1, SHELL_PAGES + 1)] == [1] * SHELL_PAGES
    assert "'imgcrawl/render/pages': 4" in result.log
    assert "Traceback" not in result.log
    assert_none_left(mark)


def test_the_same_shell_without_render_suggests_it_once(site, tmp_path):
    urls = ",".join(site.url(p) for p in ("/shell/", "/scripted/"))
    result, mark = crawl(tmp_path, urls, settings={"LOG_LEVEL": "DEBUG"})
    assert result.returncode == 0, result.log[-3000:]
    assert "Using reactor: twisted.internet.epollreactor.EPollReactor" in result.log
    assert result.manifest() == []
    hints = [line for line in result.log.splitlines() if "-a render=browser" in line]
    assert len(hints) == 2, hints  # the one WARNING line and the summary's
    assert "WARNING" in hints[0] and "has no image in its HTML" in hints[0]
    assert "2 pages had no image in their HTML" in hints[1]
    assert site.hits["/app.js"] == 0 and site.hits["/api/photos?page=1"] == 0
    assert not marked_processes(mark)


def test_render_auto_renders_only_the_pages_that_need_it(site, tmp_path):
    urls = ",".join(site.url(p) for p in ("/shell/", "/more/2"))
    result, mark = crawl(tmp_path, urls, "-a", "render=auto")
    assert result.returncode == 0, result.log[-3000:]
    assert sorted(stored(result)) == sorted(site.url(f"/photos/{n}.jpg") for n in SHELL + MORE[6:])
    assert "'imgcrawl/render/pages': 1" in result.log  # the shell; /more/2 was read as served
    assert site.hits["/shell/"] == 2 and site.hits["/more/2"] == 1
    assert_none_left(mark)
