"""The benchmark site: a paginated gallery over HTTP/1.1 keep-alive with emulated network cost.

Every request waits ``latency`` ms before its response (round trip + server time); the first
request on each new TCP connection waits ``connect`` ms more (TCP + TLS handshakes). tc netem
is not available here, so the server does it. It counts connections and requests.

Run as its own process: ``python benchmarks/server.py CORPUS_DIR --images N --latency 30
--connect 60``; it prints ``READY <port>`` once listening on 127.0.0.1. ``GET /__stats``
(not delayed, not counted) returns the counts; ``POST /__reset`` zeroes them.

Images carry an ``ETag`` (from their sha256) and a ``Last-Modified``, and a request whose
``If-None-Match`` (or, without one, ``If-Modified-Since``) matches gets a 304 with no body:
``image_bytes`` counts the image bytes sent, ``not_modified`` the 304s (a re-crawl's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import weakref
from pathlib import Path

from aiohttp import web

PER_PAGE = 40
PAGE_WINDOW = 5  # page-number links either side of the current page
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"  # every image's: the corpus does not change


def image_path(n: int, entry: dict) -> str:
    return f"/img/{n}.{entry['file'].rsplit('.', 1)[1]}"


def page_path(page: int) -> str:
    return "/gallery/" if page == 1 else f"/gallery/page/{page}"


def render_page(page: int, pages: int, images: list[tuple[int, dict]]) -> str:
    """One listing page: 40 images, page numbers (±5, first, last) and rel=next."""
    numbers = sorted({1, pages, *range(max(1, page - PAGE_WINDOW), min(pages, page + PAGE_WINDOW) + 1)})
    links = " ".join(
        f"<span>{p}</span>" if p == page else f'<a class="page" href="{page_path(p)}">{p}</a>'
        for p in numbers
    )
    head_next = f'<link rel="next" href="{page_path(page + 1)}">' if page < pages else ""
    nav_next = f'<a rel="next" class="page" href="{page_path(page + 1)}">next</a>' if page < pages else ""
    figures = "\n".join(
        f'<figure><img src="{image_path(n, e)}" alt="photo {n}" width="256"></figure>' for n, e in images
    )
    return (
        f"<!doctype html><html><head><title>Gallery page {page}</title>{head_next}</head><body>"
        f"<h1>Gallery, page {page} of {pages}</h1>\n{figures}\n"
        f'<nav class="pagination">{links} {nav_next}</nav></body></html>'
    )


class BenchSite:
    def __init__(self, corpus: Path, images: int, latency_ms: float, connect_ms: float):
        self.entries = json.loads((corpus / "corpus.json").read_text())
        # Bodies in memory: the server should cost as little CPU as possible per request.
        self.bodies = [(corpus / "files" / e["file"]).read_bytes() for e in self.entries]
        self.images = images
        self.pages = -(-images // PER_PAGE)
        self.latency = latency_ms / 1000
        self.connect = connect_ms / 1000
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.image_bytes = 0
        self.not_modified = 0
        self.connections = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._seen: weakref.WeakSet = weakref.WeakSet()
        # When each connection's last response left the handler, and each wait from there to
        # the connection's next request: the client's turnaround, which no emulated L hides.
        self._answered: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.turnarounds: list[float] = []

    def entry(self, n: int) -> tuple[dict, bytes]:
        i = n % len(self.entries)  # W1x10 repeats W1's files under new URLs
        return self.entries[i], self.bodies[i]

    def urls(self, base: str) -> list[str]:
        return [base + image_path(n, self.entry(n)[0]) for n in range(self.images)]

    def page_images(self, page: int) -> list[tuple[int, dict]]:
        start = (page - 1) * PER_PAGE
        return [(n, self.entry(n)[0]) for n in range(start, min(self.images, start + PER_PAGE))]

    @web.middleware
    async def emulate_network(self, request: web.Request, handler):
        if request.path.startswith("/__"):
            return await handler(request)
        self.requests += 1
        answered = self._answered.pop(request.transport, None)
        if answered is not None:
            self.turnarounds.append(time.monotonic() - answered)
        delay = self.latency
        if request.transport not in self._seen:
            self._seen.add(request.transport)
            self.connections += 1
            delay += self.connect
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(delay)
            return await handler(request)
        finally:
            self.in_flight -= 1
            self._answered[request.transport] = time.monotonic()

    async def gallery(self, request: web.Request) -> web.Response:
        page = int(request.match_info.get("page", 1))
        if not 1 <= page <= self.pages:
            raise web.HTTPNotFound()
        body = render_page(page, self.pages, self.page_images(page))
        return web.Response(text=body, content_type="text/html")

    async def image(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if not 0 <= n < self.images:
            raise web.HTTPNotFound()
        entry, body = self.entry(n)
        headers = {"ETag": f'"{entry["sha256"][:24]}"', "Last-Modified": LAST_MODIFIED}
        if_none_match = request.headers.get("If-None-Match")
        if (headers["ETag"] in [tag.strip() for tag in if_none_match.split(",")] if if_none_match
                else request.headers.get("If-Modified-Since") == LAST_MODIFIED):
            self.not_modified += 1
            return web.Response(status=304, headers=headers)
        self.image_bytes += len(body)
        return web.Response(body=body, content_type=entry["type"], headers=headers)

    async def urls_list(self, request: web.Request) -> web.Response:
        return web.Response(text="\n".join(self.urls(f"http://{request.host}")) + "\n")

    async def stats(self, request: web.Request) -> web.Response:
        waits = sorted(self.turnarounds)
        turnaround = {
            "turnaround_ms_mean": round(1000 * sum(waits) / len(waits), 2),
            "turnaround_ms_p99": round(1000 * waits[len(waits) * 99 // 100], 2),
        } if waits else {}
        return web.json_response({
            "requests": self.requests, "connections": self.connections,
            "image_bytes": self.image_bytes, "not_modified": self.not_modified,
            "peak_in_flight": self.peak_in_flight, **turnaround,
        })

    async def reset_view(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.emulate_network])
        app.router.add_get("/gallery/", self.gallery)
        app.router.add_get("/gallery/page/{page:\\d+}", self.gallery)
        app.router.add_get("/img/{n:\\d+}.{ext}", self.image)
        app.router.add_get("/__urls", self.urls_list)
        app.router.add_get("/__stats", self.stats)
        app.router.add_post("/__reset", self.reset_view)
        return app


async def serve(site: BenchSite, port: int = 0) -> None:
    runner = web.AppRunner(site.app(), access_log=None, handle_signals=True)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await tcp.start()
    print("READY", tcp._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()  # until killed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--latency", type=float, default=30, help="ms added to every request")
    parser.add_argument("--connect", type=float, default=60, help="ms added on a new connection")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    site = BenchSite(args.corpus, args.images, args.latency, args.connect)
    try:
        asyncio.run(serve(site, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
