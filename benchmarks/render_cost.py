"""What rendering costs: ``python benchmarks/render_cost.py [--pages N] [--runs R]``.

Serves the demo gallery (``imgcrawl.demo.build_gallery``: listing pages, detail pages, images
in the HTML, so a static crawl finds them all) on 127.0.0.1 and crawls it with ``scrapy crawl
gallery``, as served and with ``-a render=browser``, each ``R`` times into a fresh store.
``--scripted`` serves every page's body from an inline script
instead (the static crawl then finds nothing). Prints pages/s, images/s and the peak memory of the crawl's processes (Scrapy, and for the
rendered crawl Playwright's driver and Chromium), and checks both found the same images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgcrawl.demo import build_gallery  # noqa: E402


def script_built(files: dict[str, tuple[str, bytes]]) -> dict[str, tuple[str, bytes]]:
    """The same site with every page's body written by an inline script (a static crawl
    finds nothing there)."""
    built = {}
    for path, (content_type, body) in files.items():
        if content_type.startswith("text/html"):
            html = body.decode()
            start, end = html.index("<body>") + len("<body>"), html.index("</body>")
            body = (html[:start] + "<div id='app'></div><script>document.getElementById('app').innerHTML = "
                    + json.dumps(html[start:end]).replace("</", "<\\/") + ";</script>" + html[end:]).encode()
        built[path] = (content_type, body)
    return built


def serve(files: dict[str, tuple[str, bytes]]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - http.server's name
            content_type, body = files.get(self.path, ("text/plain", b"not found"))
            self.send_response(200 if self.path in files else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def rss_kb(mark: str) -> int:
    """Resident memory of every live process whose environment carries ``mark``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mark.encode() not in (entry / "environ").read_bytes():
                continue
            status = (entry / "status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def crawl(url: str, render: str, settings: list[str]) -> dict:
    mark = f"IMGCRAWL_COST_{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory() as store:
        cmd = [sys.executable, "-m", "scrapy", "crawl", "gallery", "-a", f"url={url}", "-a", f"render={render}",
               "-s", f"IMAGES_STORE={store}", "-s", "IMGCRAWL_ALLOW_PRIVATE=True", "-s", "IMGCRAWL_PROGRESS_INTERVAL=0"]
        cmd += [arg for setting in settings for arg in ("-s", setting)]
        env = {**os.environ, mark: "1", "SCRAPY_SETTINGS_MODULE": "imgcrawl.settings", "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=store, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, rss_kb(mark))
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        log = proc.stdout.read()
        manifest = Path(store) / "manifest.jsonl"
        images = sorted(json.loads(line)["url"] for line in manifest.read_text().splitlines()) if manifest.exists() else []
    if proc.returncode != 0:
        raise SystemExit(f"crawl failed ({proc.returncode}):\n{log[-3000:]}")
    pages = int(next(line for line in log.splitlines() if "'imgcrawl/pages'" in line).split(":")[1].strip(" ,"))
    return {"seconds": elapsed, "pages": pages, "images": images, "peak_mb": peak / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=20, help="listing pages (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="crawls of each kind (default: %(default)s)")
    parser.add_argument("--scripted", action="store_true", help="every page's body written by a script")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a setting for the crawls")
    args = parser.parse_args(argv)
    files = build_gallery(pages=args.pages)
    server = serve(script_built(files) if args.scripted else files)
    url = f"http://127.0.0.1:{server.server_address[1]}/gallery/"
    results = {}
    for render in ("static", "browser"):
        runs = [crawl(url, render, args.set) for _ in range(args.runs)]
        results[render] = runs
        seconds = statistics.median(r["seconds"] for r in runs)
        pages, images = runs[0]["pages"], len(runs[0]["images"])
        print(f"{render:8} {pages} pages, {images} images: median {seconds:.1f} s = {pages / seconds:.1f} pages/s, "
              f"{images / seconds:.1f} images/s; peak memory {max(r['peak_mb'] for r in runs):.0f} MB "
              f"(runs: {', '.join(format(r['seconds'], '.1f') for r in runs)} s)")
    same = results["static"][0]["images"] == results["browser"][0]["images"]
    print(f"same images found: {same}")
    server.shutdown()


if __name__ == "__main__":
    main()
