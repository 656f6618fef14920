"""The benchmark must not rot: its server's accounting, its verifier, and one tiny full run.

No timing asserts on speed: only that the emulated delays are at least what was asked.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from corpus import ensure_corpus, load_corpus  # noqa: E402
from verify import verify  # noqa: E402

LATENCY, CONNECT = 40, 120  # ms


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return ensure_corpus("photos", tmp_path_factory.mktemp("bench"), count=20)


@pytest.fixture
def server(corpus):
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "server.py"), str(corpus), "--images", "50",
         "--latency", str(LATENCY), "--connect", str(CONNECT)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline().split()
        assert line[0] == "READY", line
        yield int(line[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, float]:
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read(), time.perf_counter() - start


def stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return json.loads(get(conn, "/__stats")[1])
    finally:
        conn.close()


def test_server_delays_counts_and_pages(server, corpus):
    port = server
    entries = load_corpus(corpus)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    status, page, first = get(conn, "/gallery/")
    assert status == 200
    assert first >= (LATENCY + CONNECT) / 1000  # a new connection pays both
    html = page.decode()
    assert len(re.findall(r"<img src=", html)) == 40
    assert '<link rel="next" href="/gallery/page/2">' in html
    assert 'href="/gallery/page/2">2</a>' in html  # numbered links, last page included

    status, _, again = get(conn, "/gallery/page/2")
    assert status == 200 and again >= LATENCY / 1000
    counts = {k: v for k, v in stats(port).items() if not k.startswith("turnaround")}
    assert counts == {"requests": 2, "connections": 1, "peak_in_flight": 1,  # keep-alive kept
                      "image_bytes": 0, "not_modified": 0}

    # /img/<n> serves corpus file n % 20, byte for byte; unknown images are 404.
    time.sleep(0.2)  # a slow client: the server counts the wait as its turnaround
    status, body, _ = get(conn, f"/img/49.{entries[9]['file'].rsplit('.', 1)[1]}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == entries[9]["sha256"]
    waits = stats(port)  # two so far: right after page 1, and after the sleep
    slow, mean = waits["turnaround_ms_p99"], waits["turnaround_ms_mean"]
    assert slow >= 200 and 2 * mean - slow < 100
    assert get(conn, "/img/50.jpg")[0] == 404
    conn.close()

    other = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    get(other, "/gallery/page/2")
    other.close()
    assert stats(port)["connections"] == 2 and stats(port)["requests"] == 5


def test_server_answers_304_to_an_images_etag(server, corpus):
    """The re-crawl figure (benchmarks/recrawl.py) needs validators and 304s, counted."""
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    path = f"/img/1.{load_corpus(corpus)[1]['file'].rsplit('.', 1)[1]}"
    conn.request("GET", path)
    first = conn.getresponse()
    body, etag, last_modified = first.read(), first.getheader("ETag"), first.getheader("Last-Modified")
    assert first.status == 200 and etag and last_modified
    for conditions in ({"If-None-Match": etag}, {"If-Modified-Since": last_modified}):
        conn.request("GET", path, headers=conditions)
        again = conn.getresponse()
        assert (again.status, again.read()) == (304, b"")
    conn.request("GET", path, headers={"If-None-Match": '"other"', "If-Modified-Since": last_modified})
    assert conn.getresponse().read() == body  # If-None-Match decides when both are sent
    conn.close()
    assert {k: stats(server)[k] for k in ("image_bytes", "not_modified")} == {
        "image_bytes": 2 * len(body), "not_modified": 2}


def test_tiny_run_verifies_every_contender(tmp_path):
    """One run of the real runner on 20 images: each contender's output checked by content."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "W1", "--images", "20", "--prefix", "5",
         "--out", str(tmp_path), "--only",
         "imgcrawl,imgcrawl-aiohttp,fetch-only,stock,session,threadpool,aiohttp,aiohttp-equal,floor-draft",
         "--set", "CONCURRENT_REQUESTS_PER_DOMAIN=3", "--timeout", "150"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "W1" / "results.json").read_text())
    rows = results["contenders"]
    for name in ("imgcrawl", "imgcrawl-aiohttp", "session", "threadpool", "aiohttp", "aiohttp-equal", "floor-draft"):
        assert rows[name]["verified"], (name, rows[name]["verify"])
        assert rows[name]["returncode"] == 0
    assert rows["session"]["images"] == 5 and rows["session"]["connections"] == 1
    assert rows["imgcrawl"]["turnaround_ms_mean"] >= 0 and "turnaround_ms_mean" not in rows["floor-draft"]
    # CPU split: imgcrawl's image workers are its children; the session recipe has none.
    assert 0 < rows["imgcrawl"]["children_cpu_s"] < rows["imgcrawl"]["cpu_s"]
    assert rows["session"]["children_cpu_s"] == 0
    # "Equal connection count": aiohttp held to imgcrawl's per-host concurrency (3 here).
    assert rows["aiohttp-equal"]["connections"] == 3 and rows["imgcrawl"]["connections"] <= 3
    assert "| aiohttp (3 connections, as imgcrawl) | 20 |" in proc.stdout
    # Stock re-encodes every original: present, thumbnails fine, none byte-exact (reported, by design).
    assert rows["stock"]["verify"] == "originals 20/20 present, 0/20 byte-exact; thumbs 20/20"
    # imgcrawl crawled the page (and robots.txt) rather than being handed the URLs.
    assert rows["imgcrawl"]["requests"] == rows["imgcrawl-aiohttp"]["requests"] == 22
    assert "| imgcrawl | 20 |" in proc.stdout
    # Fetch-only: Scrapy with imgcrawl's settings fetched every image URL (and robots.txt),
    # over imgcrawl's per-host connections, and stored nothing.
    fetched = rows["fetch-only"]
    assert fetched["verified"] and fetched["requests"] == 21 and fetched["connections"] <= 3
    assert fetched["verify"] == "21 fetched, nothing stored" and not (tmp_path / "W1" / "fetch-only" / "full").exists()

    # The verifier notices a changed original and a missing thumbnail.
    urls = (tmp_path / "W1" / "urls.txt").read_text().split()
    entries = load_corpus(tmp_path / "corpus-photos-20")
    expected = {u: entries[n]["sha256"] for n, u in enumerate(urls)}
    out = tmp_path / "W1" / "imgcrawl"
    victim = sorted((out / "full").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"x")
    next((out / "thumbs" / "small").iterdir()).unlink()
    verdict = verify(out, expected)
    assert (verdict.originals_present, verdict.originals_exact, verdict.thumbs_ok) == (20, 19, 19)
    assert not verdict.ok


def test_multicore_processes_share_one_crawl(tmp_path):
    """benchmarks/multicore.py: two processes over one Redis frontier fill one store, checked by
    content, and the site never sees more than the per-host limit given for all of them."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "multicore.py"), "W2", "--images", "80", "--processes", "2",
         "--workers", "1", "--per-host", "4", "--idle-close", "1", "--out", str(tmp_path), "--timeout", "120"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "W2-multicore-2" / "results.json").read_text())
    assert results["verify"] == "originals 80/80 present, 80/80 byte-exact; thumbs 80/80"
    assert results["settings"]["CONCURRENT_REQUESTS_PER_DOMAIN"] == "2"  # 4 shared by 2 processes
    assert results["server"]["peak_in_flight"] <= 4
    # Each page and image once: 2 gallery pages, 80 images, a robots.txt per process at most.
    assert 82 < results["server"]["requests"] <= 84
    assert len(results["per_process"]) == 2 and results["workers_cpu_ms_per_image"] > 0
