"""N imgcrawl processes sharing one crawl over the Redis frontier, against the benchmark site:
``python benchmarks/multicore.py W2 --processes 2 [--workers 1]``.

Starts a private ``redis-server`` and the benchmark server, starts N ``scrapy crawl gallery``
processes without a start URL (each under ``/usr/bin/time -v``), pushes the gallery's URL to
``gallery:start_urls``, waits for all of them, and verifies the shared store as ``run.py``
does: every image URL in the merged manifest, its original byte-exact, its thumbnail present.
Politeness per host is kept: each process gets ``CONCURRENT_REQUESTS_PER_DOMAIN`` ÷ N (of
``--per-host``, imgcrawl's 16 by default), so the site sees the same concurrency as from one
process (the server's peak in flight says so).

It prints, per process and in all: CPU seconds of the main process and of its image workers,
per image, and the images/s of the crawl. The crawl's time runs from the start URL's push to
the last original written: a process that has run dry waits ``IMGCRAWL_REDIS_IDLE_CLOSE``
(checked on Scrapy's 5 s heartbeat) for the others' pages before it exits, which is not crawl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]

from corpus import WORKLOADS, ensure_corpus, load_corpus  # noqa: E402
from run import PY, REPO, Server, measure  # noqa: E402
from servers import start_redis  # noqa: E402
from verify import verify  # noqa: E402

PER_HOST = 16  # imgcrawl's default CONCURRENT_REQUESTS_PER_DOMAIN, shared out among the processes
IDLE_CLOSE = 10  # seconds a drained process waits for the others' pages (a frontier runs dry between pages)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=list(WORKLOADS))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--per-host", type=int, default=PER_HOST,
                        help="connections to the site from all processes together (each gets its share)")
    parser.add_argument("--idle-close", type=float, default=IDLE_CLOSE,
                        help="IMGCRAWL_REDIS_IDLE_CLOSE: seconds a process with nothing to do waits")
    parser.add_argument("--workers", type=int, help="IMGCRAWL_WORKERS per process (default: imgcrawl's)")
    parser.add_argument("--images", type=int, help="a smaller workload of N images")
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="corpus and results directory")
    parser.add_argument("--checkout", type=Path, default=REPO, help="run imgcrawl from this checkout")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    args = parser.parse_args(argv)

    w = WORKLOADS[args.workload]
    if args.images:
        w = replace(w, images=args.images)
    corpus = ensure_corpus(w.corpus, args.out, count=args.images)
    entries = load_corpus(corpus)
    root = args.out / f"{w.name}-multicore-{args.processes}"
    shutil.rmtree(root, ignore_errors=True)
    store = root / "store"
    store.mkdir(parents=True)
    (root / "redis").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(args.checkout)
    settings = {
        "IMAGES_STORE": store, "IMGCRAWL_ALLOW_PRIVATE": True,
        "CONCURRENT_REQUESTS_PER_DOMAIN": args.per_host // args.processes,
        "IMGCRAWL_REDIS_IDLE_CLOSE": args.idle_close, **({"IMGCRAWL_WORKERS": args.workers} if args.workers else {}),
    }
    redis_proc, redis_url = start_redis(root / "redis")
    load_before = os.getloadavg()
    try:
        with Server(w, corpus) as site:
            urls = site.call("/__urls").decode().split()
            site.reset()
            cmd = [PY, "-m", "scrapy", "crawl", "gallery", "-s", f"IMGCRAWL_REDIS_URL={redis_url}"]
            for name, value in settings.items():
                cmd += ["-s", f"{name}={value}"]
            results: dict[int, object] = {}
            threads = [
                threading.Thread(target=lambda n=n: results.__setitem__(
                    n, measure(cmd, args.checkout, env, root / f"process-{n}.log", args.timeout)))
                for n in range(args.processes)
            ]
            for t in threads:
                t.start()
            import redis

            time.sleep(3)  # the processes start (imports, workers) before the clock does
            start = time.time()
            redis.Redis.from_url(redis_url).rpush("gallery:start_urls", f"{site.base}/gallery/")
            for t in threads:
                t.join()
            net = site.stats()
    finally:
        redis_proc.kill()
        redis_proc.wait(timeout=10)

    expected = {u: entries[n % len(entries)]["sha256"] for n, u in enumerate(urls)}
    verdict = verify(store, expected)
    last_write = max(p.stat().st_mtime for p in (store / "full").iterdir())
    crawl_s = last_write - start
    n_images = verdict.originals_present
    procs = [
        {"process": n, "returncode": m.returncode, "wall_s": round(m.wall, 1), "cpu_s": round(m.cpu_s, 2),
         "main_cpu_s": round(m.cpu_s - m.children_cpu_s, 2), "workers_cpu_s": round(m.children_cpu_s, 2),
         "max_rss_mb": round(m.max_rss_mb), "tree_rss_mb": round(m.tree_rss_mb)}
        for n, m in sorted(results.items())
    ]
    main_cpu = sum(p["main_cpu_s"] for p in procs)
    workers_cpu = sum(p["workers_cpu_s"] for p in procs)
    summary = {
        "workload": w.name, "processes": args.processes, "settings": {k: str(v) for k, v in settings.items()},
        "load_before": load_before, "load_after": os.getloadavg(),
        "crawl_s": round(crawl_s, 1), "images_per_s": round(n_images / crawl_s, 1),
        "main_cpu_ms_per_image": round(1000 * main_cpu / n_images, 2),
        "workers_cpu_ms_per_image": round(1000 * workers_cpu / n_images, 2),
        "verified": verdict.ok and all(p["returncode"] == 0 for p in procs), "verify": verdict.summary(),
        "server": net, "per_process": procs,
    }
    (root / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    if not summary["verified"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
