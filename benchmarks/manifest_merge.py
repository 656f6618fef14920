"""The end-of-crawl manifest merge at scale: an N-line manifest plus an N-line re-crawl
journal (every image seen again, in another order) through :meth:`LocalManifest.merge`;
prints the time and what the merge added to the process's peak RSS.

``python benchmarks/manifest_merge.py N WORK_DIR`` (WORK_DIR is created; about 1 KB per line
of disk is used while it runs)
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from imgcrawl.merge import LocalManifest


def line(n: int, status: str) -> bytes:
    name = f"{n:040x}"
    return json.dumps({
        "url": f"https://photos.example/img/{n}.jpg", "page_url": f"https://photos.example/gallery/?page={n // 30}",
        "position": n % 30, "alt": "A photo of the harbour at dusk", "title": "", "status": status,
        "path": f"full/{name}.jpg", "sha256": f"{n:064x}", "format": "JPEG", "width": 1600, "height": 1067,
        "bytes": 345678, "thumbs": {"small": f"thumbs/small/{name}.jpg"},
    }).encode() + b"\n"


def main(count: int, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    manifest = LocalManifest(work / "manifest.jsonl")
    with manifest.path.open("wb") as out:
        for n in range(count):
            out.write(line(n, "downloaded"))
    fd, _ = manifest.open_journal()
    with open(fd, "wb", closefd=False) as out:
        for n in reversed(range(count)):
            out.write(line(n, "uptodate"))
    os.close(fd)
    size = 2 * manifest.path.stat().st_size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    report = manifest.merge()
    took = time.perf_counter() - started
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{count} + {count} lines ({size / 1e6:.0f} MB) merged into {report.images} lines in {took:.1f} s "
          f"({took / (2 * count) * 1e6:.1f} us a line); peak RSS +{added:.0f} MB")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
