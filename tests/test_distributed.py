"""Distributed crawling end to end: two real workers share one real redis-server frontier."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from random import Random

import pytest
import redis

from conftest import LocalSite, crawl_command, run_crawl
from imgcrawl.demo import make_image

DETAIL_PAGES = 16
GATE_TIMEOUT = 20  # seconds a detail page waits for the other worker to show up


def detail_site(gate) -> LocalSite:
    """A gallery page linking to detail pages, one photo each.

    Each detail page request calls ``gate(worker)`` (worker = User-Agent) before it is
    answered, so tests decide when pages complete instead of hoping for a timing.
    ``pages_by_worker`` counts detail pages per worker.
    """
    rng = Random(5)
    files = {}
    links = []
    for n in range(1, DETAIL_PAGES + 1):
        files[f"/img/p{n:02d}.jpg"] = ("image/jpeg", make_image(rng, "jpg", f"p{n}"))
        files[f"/photo/p{n:02d}.html"] = (
            "text/html", f'<html><body><img src="/img/p{n:02d}.jpg" alt="P{n}"></body></html>'.encode()
        )
        links.append(f'<li><a href="/photo/p{n:02d}.html">photo {n}</a></li>')
    files["/gallery/"] = ("text/html", f"<html><body><ul>{''.join(links)}</ul></body></html>".encode())
    files["/robots.txt"] = ("text/plain", b"User-agent: *\nAllow: /\n")
    site = LocalSite(files)
    site.pages_by_worker = Counter()
    lock = threading.Lock()

    def detail(handler):
        worker = handler.headers.get("User-Agent", "")
        with lock:
            site.pages_by_worker[worker] += 1
        gate(worker)
        content_type, body = files[handler.path]
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass  # the worker was killed while this page was held

    site.handlers = {f"/photo/p{n:02d}.html": detail for n in range(1, DETAIL_PAGES + 1)}
    return site.start()


PAGES = ["/gallery/"] + [f"/photo/p{n:02d}.html" for n in range(1, DETAIL_PAGES + 1)]


def worker_settings(redis_url: str, name: str) -> dict:
    return {
        "IMGCRAWL_REDIS_URL": redis_url,
        "IMGCRAWL_REDIS_IDLE_CLOSE": "5",
        "USER_AGENT": name,
        # Two requests at a time per worker, so one worker cannot take the whole frontier.
        "CONCURRENT_REQUESTS": "2",
        "IMGCRAWL_WORKERS": "1",
    }


@pytest.fixture
def shared_site():
    """Detail pages are answered once both workers have asked for one (or after GATE_TIMEOUT)."""
    seen: set[str] = set()
    both_seen = threading.Event()

    def gate(worker):
        seen.add(worker)
        if len(seen) >= 2:
            both_seen.set()
        both_seen.wait(GATE_TIMEOUT)

    site = detail_site(gate)
    yield site
    site.stop()


def test_two_workers_share_one_frontier(redis_url, shared_site, tmp_path):
    client = redis.Redis.from_url(redis_url)
    # Worker B gets no -a url: the gallery comes from the Redis start-URL list.
    client.rpush("gallery:start_urls", "not-a-url", shared_site.url("/gallery/"))
    store = tmp_path / "store"

    def worker(name: str, *args: str):
        home = tmp_path / name
        home.mkdir()
        started = time.monotonic()
        result = run_crawl(home, *args, store=store, settings=worker_settings(redis_url, name))
        return result, time.monotonic() - started

    commands_before = client.info("stats")["total_commands_processed"]
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(worker, "worker-a", "-a", f"url={shared_site.url('/photo/p01.html')}")
        b = pool.submit(worker, "worker-b")
        results = [a.result(), b.result()]
    elapsed = time.monotonic() - started

    for result, _ in results:
        assert result.returncode == 0, result.log[-3000:]
        assert "Traceback" not in result.log
        assert "'finish_reason': 'finished'" in result.log
    # A bad entry in the start-URL list: one WARNING line with the reason, and counted.
    warnings = [line for result, _ in results for line in result.log.splitlines() if " WARNING: " in line]
    assert len(warnings) == 1 and "'not-a-url'" in warnings[0] and "absolute http(s) URL" in warnings[0], warnings
    assert sum("'imgcrawl/failed/bad-start-url': 1" in result.log for result, _ in results) == 1
    # Every page fetched exactly once across both workers, and both fetched some.
    assert {p: shared_site.hits[p] for p in PAGES} == dict.fromkeys(PAGES, 1)
    split = dict(shared_site.pages_by_worker)
    assert set(split) == {"worker-a", "worker-b"} and sum(split.values()) == DETAIL_PAGES, split
    print(f"\ntwo workers: {elapsed:.1f} s wall, "
          + ", ".join(f"{name} {secs:.1f} s" for (_, secs), name in zip(results, ("a", "b")))
          + f"; detail pages per worker: {split}; Redis commands: "
          + f"{client.info('stats')['total_commands_processed'] - commands_before} for {len(PAGES)} pages")
    # Every image fetched once, stored once, byte-exact; the shared index knows them all, and
    # the one manifest both workers merged into (ending within moments of each other) has
    # one line for each, in the order of the pages.
    lines = results[0][0].manifest()
    assert len(list((store / "crawls").glob("manifest-*.jsonl"))) == 2
    images = {p: body for p, (_, body) in shared_site.files.items() if p.startswith("/img/")}
    assert all(shared_site.hits[p] == 1 for p in images), {p: shared_site.hits[p] for p in images}
    assert sorted(line["url"] for line in lines) == sorted(shared_site.url(p) for p in images)
    for line in lines:
        assert line["status"] == "downloaded", line
        body = images[line["url"].split(str(shared_site.port), 1)[1]]
        assert (store / line["path"]).read_bytes() == body
        assert line["sha256"] == hashlib.sha256(body).hexdigest()
        assert (store / line["thumbs"]["small"]).exists()
    assert len(list((store / "full").iterdir())) == len(images)
    assert client.hlen("imgcrawl:index") == len(images)
    assert not (store / ".imgcrawl" / "index.sqlite").exists()
    # The start-URL list was consumed; the frontier is drained but kept (SCHEDULER_PERSIST).
    assert client.llen("gallery:start_urls") == 0
    assert client.zcard("gallery:requests") == 0
    assert client.scard("gallery:dupefilter") == len(PAGES)
    client.close()


def test_a_worker_takes_only_the_pages_it_can_start_soon(redis_url, shared_site, tmp_path):
    """At Scrapy's full concurrency (CONCURRENT_REQUESTS 128, 16 connections per host) the
    worker that finds the gallery takes at most IMGCRAWL_REDIS_PAGES_AHEAD of its detail pages
    from the frontier, so the other worker gets some: the held pages are answered only once
    both workers have asked for one (without the bound the first took all 16, the second none)."""
    store = tmp_path / "store"
    settings = {**worker_settings(redis_url, ""), "IMGCRAWL_REDIS_PAGES_AHEAD": "4",
                "IMGCRAWL_REDIS_IDLE_CLOSE": "15"}
    del settings["CONCURRENT_REQUESTS"]

    def worker(name: str, *args: str):
        home = tmp_path / name
        home.mkdir()
        return run_crawl(home, *args, store=store, settings={**settings, "USER_AGENT": name})

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(worker, "worker-a", "-a", f"url={shared_site.url('/gallery/')}")
        b = pool.submit(worker, "worker-b")
        results = [a.result(), b.result()]
    for result in results:
        assert result.returncode == 0, result.log[-3000:]
    split = dict(shared_site.pages_by_worker)
    assert set(split) == {"worker-a", "worker-b"} and sum(split.values()) == DETAIL_PAGES, split
    assert {p: shared_site.hits[p] for p in PAGES} == dict.fromkeys(PAGES, 1)
    assert len(list((store / "full").iterdir())) == DETAIL_PAGES


def test_a_worker_started_before_the_push_waits_for_the_crawl_to_begin(redis_url, tmp_path):
    """IMGCRAWL_REDIS_IDLE_CLOSE counts from when the crawl has begun (a page queued by any
    worker), not from the worker's start: one started well before the start URL is pushed
    still crawls the gallery, then finishes after its idle close."""
    site = detail_site(lambda worker: None)
    client = redis.Redis.from_url(redis_url)
    settings = {**worker_settings(redis_url, "early"), "IMGCRAWL_REDIS_IDLE_CLOSE": "2"}
    try:
        with ThreadPoolExecutor(1) as pool:
            early = pool.submit(run_crawl, tmp_path, store=tmp_path / "store", settings=settings)
            time.sleep(6)  # three idle closes: the old countdown had ended the worker by now
            assert not early.done(), early.result().log[-3000:]
            client.rpush("gallery:start_urls", site.url("/gallery/"))
            result = early.result(timeout=120)
    finally:
        site.stop()
        client.close()
    assert result.returncode == 0, result.log[-3000:]
    assert "Waiting for the crawl to begin" in result.log
    assert {p: site.hits[p] for p in PAGES} == dict.fromkeys(PAGES, 1)
    assert len(list((tmp_path / "store" / "full").iterdir())) == DETAIL_PAGES


def test_killed_worker_pages_are_crawled_on_restart(redis_url, tmp_path):
    """SCHEDULER_PERSIST: what a killed worker left queued is crawled after a restart."""
    release = threading.Event()
    site = detail_site(lambda worker: release.wait(GATE_TIMEOUT) if worker == "doomed" else None)
    client = redis.Redis.from_url(redis_url)
    try:
        first = tmp_path / "doomed"
        first.mkdir()
        store = first / "store"
        cmd, env = crawl_command(store, "-a", f"url={site.url('/gallery/')}",
                                 settings=worker_settings(redis_url, "doomed"))
        proc = subprocess.Popen(cmd, cwd=first, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):  # up to ~60 s for the worker to hold two detail pages
                if sum(site.pages_by_worker.values()) >= 2 or proc.poll() is not None:
                    break
                time.sleep(0.1)
        finally:
            proc.kill()
            proc.wait(timeout=30)
            release.set()
        in_flight = {p for p in PAGES[1:] if site.hits[p]}
        assert len(in_flight) == 2 and client.zcard("gallery:requests") == DETAIL_PAGES - 2

        second = tmp_path / "restarted"
        second.mkdir()
        result = run_crawl(second, "-a", f"url={site.url('/gallery/')}", store=store,
                           settings=worker_settings(redis_url, "restarted"))
        assert result.returncode == 0, result.log[-3000:]
        # Every queued page crawled once, none twice; the killed worker's in-flight pages
        # were already marked seen, so they are not fetched again (see README).
        assert {p: site.hits[p] for p in PAGES} == dict.fromkeys(PAGES, 1)
        assert site.pages_by_worker["restarted"] == DETAIL_PAGES - 2
        stored = {line["url"] for line in result.crawl_lines()}  # the restarted worker's lines
        assert stored == {site.url(p.replace("/photo/", "/img/").replace(".html", ".jpg"))
                          for p in PAGES[1:] if p not in in_flight}
    finally:
        client.close()
        site.stop()
