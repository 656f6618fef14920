"""The re-crawl figure: what a re-crawl of the benchmark gallery transfers once every image is
due again (``IMAGES_EXPIRES=0``) and nothing changed, as a share of the first crawl's image bytes.

``python benchmarks/recrawl.py [--images 300]``

Crawls the W1 gallery (``--images`` URLs, the W1 corpus' mix) into a fresh store, then again
into the same store with ``-s IMAGES_EXPIRES=0``. The server counts the image bytes it sends
and the 304s it answers; Scrapy's ``downloader/response_bytes`` counts every byte of every
response the crawler got (status lines and headers, pages and robots.txt included).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from corpus import OUT, WORKLOADS, ensure_corpus  # noqa: E402
from run import PY, REPO, Server  # noqa: E402


def stat(log: str, name: str) -> int:
    found = re.search(rf"'{re.escape(name)}': (\d+)", log)
    return int(found.group(1)) if found else 0


def crawl(server: Server, store: Path, *settings: str) -> dict:
    server.reset()
    # The stats are read from Scrapy's stats dump, logged at INFO without the brief log.
    cmd = [PY, "-m", "scrapy", "crawl", "gallery", "-a", f"url={server.base}/gallery/",
           "-s", f"IMAGES_STORE={store}", "-s", "IMGCRAWL_ALLOW_PRIVATE=True", "-s", "IMGCRAWL_BRIEF_LOG=False"]
    for setting in settings:
        cmd += ["-s", setting]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 or "'finish_reason': 'finished'" not in log:
        raise SystemExit(f"crawl failed (rc={proc.returncode}):\n{log[-3000:]}")
    return {
        **server.stats(),
        "stored": stat(log, "imgcrawl/stored"),
        "uptodate": stat(log, "file_status_count/uptodate"),
        "not_modified_stat": stat(log, "imgcrawl/not_modified"),
        "response_bytes": stat(log, "downloader/response_bytes"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT, help="where the corpus is generated (once)")
    args = parser.parse_args()
    workload = replace(WORKLOADS["W1"], images=args.images)
    corpus = ensure_corpus(workload.corpus, args.out, count=args.images)
    with tempfile.TemporaryDirectory(prefix="recrawl-") as tmp, Server(workload, corpus) as server:
        store = Path(tmp) / "store"
        first = crawl(server, store)
        again = crawl(server, store, "IMAGES_EXPIRES=0")
    base = first["image_bytes"]
    print(f"{args.images} images (W1 mix), L = {workload.latency_ms} ms")
    print(f"first crawl: {first['stored']} stored, image bytes sent {base:,}, "
          f"response bytes received {first['response_bytes']:,}")
    print(f"re-crawl after expiry: {again['not_modified']} answered 304 ({again['not_modified_stat']} counted), "
          f"{again['uptodate']} uptodate, {again['stored']} stored again")
    print(f"  image bytes sent {again['image_bytes']:,} = {again['image_bytes'] / base:.2%} of the first crawl's")
    print(f"  every response byte received (heads, pages, robots.txt) {again['response_bytes']:,} "
          f"= {again['response_bytes'] / base:.2%} of the first crawl's image bytes")


if __name__ == "__main__":
    main()
