"""-a render=browser: galleries built by JavaScript, rendered in the system Chromium.

The test site (below, no external assets) has three galleries a static crawl finds nothing
in: an empty shell filled from a JSON API with infinite scroll, images whose src a script
sets from a data attribute, and a page whose "Load more" button fetches more images.
Crawls are real ``scrapy crawl`` subprocesses against 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import LocalSite, answer, crawl_command, run_crawl
from parsel import Selector

from imgcrawl import exitstatus, render, sites
from imgcrawl.demo import make_image

SITES_WORDPRESS = Path(sites.__file__).parent / "wordpress.toml"
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
    site.delays["/api/photos?page=2"] = 1  # a slow data request is waited for, not taken as the end
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


GUARDED_HTML = """<!doctype html><html><body><div id="app"></div>
<script src="http://127.0.0.2:{lan}/lan.js"></script>
<script src="/to-lan.js"></script>
<script>
fetch('http://169.254.169.254/latest/meta-data/').catch(() => {{}});
document.getElementById('app').insertAdjacentHTML('beforeend', '<img src="/photos/{name}.jpg">');
</script></body></html>"""
LAN_JS = "document.getElementById('app').insertAdjacentHTML('beforeend', '<img src=\"/photos/lan.jpg\">');"


def test_the_browsers_own_requests_pass_the_ssrf_guard(tmp_path):
    # 127.0.0.1 stands in for the public internet (the guard subclass of test_security allows
    # it); 127.0.0.2 is a LAN host, 169.254.169.254 the cloud metadata address.
    from test_security import GUARD_SUBCLASS

    from imgcrawl import settings as defaults

    lan = LocalSite({"/lan.js": ("application/javascript", LAN_JS.encode())}, host="127.0.0.2").start()
    name = SCRIPTED[0]
    site = LocalSite({f"/photos/{name}.jpg": ("image/jpeg", photo(name)),
                      "/photos/lan.jpg": ("image/jpeg", photo("lan"))})
    site.handlers["/to-lan.js"] = lambda h: (h.send_response(302), h.send_header("Location", lan.url("/lan.js")),
                                             h.send_header("Content-Length", "0"), h.end_headers())
    site.files["/guarded/"] = ("text/html", GUARDED_HTML.format(lan=lan.port, name=name).encode())
    site.start()
    middlewares = {**defaults.DOWNLOADER_MIDDLEWARES, "imgcrawl.guard.PrivateAddressGuard": None,
                   "guardtest.LoopbackIsPublic": 60}
    try:
        results = {}
        for allow in (False, True):  # the guard on, then off: the LAN host is reachable
            hits_before = sum(lan.hits.values())
            (tmp_path / str(allow)).mkdir()
            (tmp_path / str(allow) / "guardtest.py").write_text(GUARD_SUBCLASS)
            result, mark = crawl(tmp_path / str(allow), site.url("/guarded/"), "-a", "render=browser", settings={
                "IMGCRAWL_ALLOW_PRIVATE": allow, "DOWNLOADER_MIDDLEWARES": json.dumps(middlewares)})
            results[allow] = (result, sum(lan.hits.values()) - hits_before)
            assert result.returncode == 0, result.log[-3000:]
            assert_none_left(mark)
    finally:
        site.stop()
        lan.stop()
    guarded, lan_hits = results[False]
    assert lan_hits == 0  # neither the script nor the redirect to 127.0.0.2 reached it
    assert sorted(stored(guarded)) == [site.url(f"/photos/{name}.jpg")]
    refused = [line for line in guarded.log.splitlines() if "Browser connection refused" in line]
    assert any("127.0.0.2 is 127.0.0.2, not a public address" in line for line in refused), refused
    assert any("169.254.169.254 is 169.254.169.254" in line for line in refused), refused
    assert "Traceback" not in guarded.log
    unguarded, lan_hits = results[True]
    assert lan_hits >= 1 and site.url("/photos/lan.jpg") in stored(unguarded)


@pytest.mark.parametrize("interrupts", [1, 2])
def test_ctrl_c_leaves_no_browser_behind(site, tmp_path, interrupts):
    # The shell's second data page never answers in time: the crawl is mid-render when a
    # terminal's Ctrl-C (SIGINT to the whole process group) arrives, once (graceful stop)
    # or twice (forced).
    site.delays["/api/photos?page=2"] = 60
    mark = f"IMGCRAWL_TEST_MARK_{uuid.uuid4().hex}"
    cmd, env = crawl_command(tmp_path / "store", "-a", f"url={site.url('/shell/')}", "-a", "render=browser",
                             settings={"IMGCRAWL_WORKER_POOL": "thread", "IMGCRAWL_RENDER_SCROLL_TIME": 5})
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**env, mark: "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while site.hits["/api/photos?page=2"] == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert site.hits["/api/photos?page=2"] == 1, "the crawl never reached the page's second data request"
        assert any("chrom" in command for _, command in marked_processes(mark))  # Chromium is running
        for _ in range(interrupts):
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.5)
        log, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == exitstatus.FAILED and "Received SIGINT" in log, log[-3000:]
    assert_none_left(mark)


def test_the_asyncio_reactor_keeps_the_per_host_limit(tmp_path):
    # Rendering crawls run on the asyncio reactor, where Scrapy's downloader let a host's
    # requests past CONCURRENT_REQUESTS_PER_DOMAIN (imgcrawl.compat.Downloader closes that).
    names = [f"limit{i}" for i in range(40)]
    inflight = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def slow_image(body):
        def handler(h):
            with lock:
                inflight["now"] += 1
                inflight["peak"] = max(inflight["peak"], inflight["now"])
            time.sleep(0.05)
            with lock:
                inflight["now"] -= 1
            answer(h, "image/jpeg", body)
        return handler

    site = LocalSite({"/": ("text/html", imgs(names).encode())},
                     handlers={f"/photos/{n}.jpg": slow_image(photo(n)) for n in names}).start()
    try:
        result, _ = crawl(tmp_path, site.url("/"), settings={
            "TWISTED_REACTOR": render.ASYNCIO_REACTOR, "CONCURRENT_REQUESTS_PER_DOMAIN": 2, "LOG_LEVEL": "DEBUG"})
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    assert "Using reactor: twisted.internet.asyncioreactor.AsyncioSelectorReactor" in result.log
    assert len(stored(result)) == 40
    assert inflight["peak"] == 2
    assert site.connections == 2  # robots.txt, the page and 40 images over two kept connections


# -- without a browser ---------------------------------------------------------------


def test_the_browsers_proxy_connects_only_where_the_guard_said():
    from imgcrawl.guard import BlockedRequest
    from imgcrawl.socksguard import GuardedSocksProxy

    async def echo(reader, writer):
        writer.write(await reader.read(4))
        await writer.drain()
        writer.close()

    async def check(host):
        if host == "lan.example":
            raise BlockedRequest("private-address", "lan.example is 10.0.0.1, not a public address")
        return ["127.0.0.1"]  # what the guard checked, whatever the name resolves to later

    async def ask(port, request: bytes, greeting=b"\x05\x01\x00"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(greeting + request)
        answer = await asyncio.wait_for(reader.readexactly(2), 5)
        if answer == b"\x05\x00":
            answer += await asyncio.wait_for(reader.readexactly(10), 5)
        return reader, writer, answer

    def connect(host: bytes, port: int, command: int = 1) -> bytes:
        return bytes([5, command, 0, 3, len(host)]) + host + port.to_bytes(2, "big")

    async def scenario():
        upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
        upstream_port = upstream.sockets[0].getsockname()[1]
        refused = []
        proxy = GuardedSocksProxy(check, lambda target, exc: refused.append((target, str(exc))))
        port = await proxy.start()
        try:
            # A name that does not resolve here reaches the address the check gave.
            reader, writer, answer = await ask(port, connect(b"rebind.example", upstream_port))
            assert answer == b"\x05\x00" + bytes([5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            writer.close()
            _, _, answer = await ask(port, connect(b"lan.example", upstream_port))
            assert answer[2:4] == bytes([5, 2])  # not allowed by the ruleset
            assert refused == [(f"lan.example:{upstream_port}",
                                "private-address: lan.example is 10.0.0.1, not a public address")]
            _, _, answer = await ask(port, connect(b"rebind.example", upstream_port, command=3))
            assert answer[2:4] == bytes([5, 7])  # UDP ASSOCIATE: not supported
            _, _, answer = await ask(port, b"", greeting=b"\x05\x01\x02")  # user/password only
            assert answer == b"\x05\xff"
        finally:
            await proxy.close()
            upstream.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("value", "mode"), [(None, "static"), ("browser", "browser"), (" Auto ", "auto")])
def test_parse_mode(value, mode):
    assert render.parse_mode(value) == mode


def test_a_bad_render_mode_is_one_line_with_an_example(tmp_path):
    with pytest.raises(ValueError, match=r"bad render='chrome': need one of static, browser, auto, e\.g\. -a render=browser"):
        render.parse_mode("chrome")
    result = run_crawl(tmp_path, "-a", "url=http://127.0.0.1:9/", "-a", "render=chrome")
    assert result.returncode == exitstatus.USAGE
    errors = [line for line in result.log.splitlines() if "ERROR:" in line]
    assert len(errors) == 1 and "bad render='chrome'" in errors[0]
    assert "Traceback" not in result.log


def test_reactor_for():
    assert render.reactor_for("browser") == render.reactor_for("auto") == render.ASYNCIO_REACTOR
    assert render.reactor_for("static") is None


@pytest.mark.parametrize(("html", "built"), [
    (SHELL_HTML, True),  # an empty mount point and an external script
    (SCRIPTED_HTML, True),  # an inline script that sets src
    (MORE_HTML.replace("{imgs}", ""), True),  # fetch() + insertAdjacentHTML
    ("<html><body><p>No photos yet.</p><script src='/analytics.js'></script></body></html>", False),
    ("<html><body><div id='app'><p>Server-rendered</p></div><script src='/app.js'></script></body></html>", False),
    ("<html><body><script>console.log('hi')</script></body></html>", False),
    ("<html><body><script type='application/ld+json'>{\"innerHTML\": 1}</script></body></html>", False),
])
def test_looks_script_built(html, built):
    assert render.looks_script_built(Selector(text=html)) is built


def test_a_profile_says_render(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('render = "Browser"\n')
    assert sites.load_profile(good).render == "browser"
    assert sites.load_profile(SITES_WORDPRESS).render is None
    bad = tmp_path / "bad.toml"
    bad.write_text('render = "yes"\n')
    with pytest.raises(sites.ProfileError, match=r"profile .*bad.toml: bad render='yes': need one of"):
        sites.load_profile(bad)


@pytest.mark.parametrize(("setting", "expected"), [
    ({"IMGCRAWL_BROWSER": "/nonexistent/chromium"}, "render=browser needs Chromium at /nonexistent/chromium"),
    ({"TWISTED_REACTOR": "twisted.internet.epollreactor.EPollReactor"},
     "render=browser runs on the asyncio reactor, but TWISTED_REACTOR is set to"),
])
def test_a_crawl_that_cannot_render_says_why_in_one_line(tmp_path, setting, expected):
    result, mark = crawl(tmp_path, "http://127.0.0.1:9/", "-a", "render=browser", settings=setting)
    assert result.returncode == exitstatus.USAGE
    errors = [line for line in result.log.splitlines() if "ERROR:" in line]
    assert len(errors) == 1 and expected in errors[0], result.log[-2000:]
    assert "Traceback" not in result.log
    assert not marked_processes(mark)


def test_a_page_that_does_not_load_in_time_fails_in_one_line(site, tmp_path):
    site.delays["/more/"] = 10
    result, mark = crawl(tmp_path, site.url("/more/"), "-a", "render=browser",
                         settings={"IMGCRAWL_RENDER_TIMEOUT": 2, "RETRY_TIMES": 0})
    assert result.returncode == exitstatus.NOTHING_CRAWLED, result.log[-3000:]
    failed = [line for line in result.log.splitlines() if "Page failed" in line]
    assert len(failed) == 1 and site.url("/more/") in failed[0], result.log[-3000:]
    assert "Traceback" not in result.log
    assert_none_left(mark)


def test_imgcrawl_crawl_render_browser(site, tmp_path):
    # imgcrawl crawl runs scrapy crawl in its own process: the spider switches the reactor there.
    from test_cli import imgcrawl

    proc = imgcrawl(tmp_path, "crawl", site.url("/scripted/"), "--render", "browser", "-o", str(tmp_path / "out"),
                    "-s", "IMGCRAWL_ALLOW_PRIVATE=True", "-s", "IMGCRAWL_WORKER_POOL=thread")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(line["url"] for line in lines) == sorted(site.url(f"/photos/{n}.jpg") for n in SCRIPTED)
