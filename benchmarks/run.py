"""Run the imgcrawl benchmark: ``python benchmarks/run.py W1|W2|W1x10|all``.

For each workload: generate the seeded corpus once (cached in ``benchmarks/out/``), start the
benchmark server (its own process, emulated latency), then run each contender as a whole
process under ``/usr/bin/time -v``, verify its output, and print one table with images/s,
CPU %, peak RSS, the server's connection and request counts, and imgcrawl's ratios to each
peer and to the limits (CPU floor, network bound). Results also go to
``benchmarks/out/<workload>/results.{json,md}``.

Options: ``--only imgcrawl,stock,...`` picks contenders; ``--set NAME=VALUE`` passes a
setting to imgcrawl (for tuning runs); ``--prefix N`` sizes the serial recipes' URL prefix;
``--checkout DIR`` runs imgcrawl from another checkout (before/after comparisons);
``--img2dataset PYTHON`` adds img2dataset's thumbnails and originals jobs (peers.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from corpus import OUT, WORKLOADS, Workload, ensure_corpus, load_corpus  # noqa: E402
from verify import verify  # noqa: E402

PY = sys.executable
# W1x10 is long: by default only the contenders that finish it in minutes.
DEFAULT_CONTENDERS = {
    "W1": ["imgcrawl", "imgcrawl-aiohttp", "fetch-only", "stock", "get", "session", "threadpool", "aiohttp",
           "floor-draft", "floor-full"],
    "W2": ["imgcrawl", "imgcrawl-aiohttp", "fetch-only", "stock", "get", "session", "threadpool", "aiohttp",
           "aiohttp-equal", "floor-draft"],
    "W1x10": ["imgcrawl", "threadpool", "floor-draft"],
}
# imgcrawl with Scrapy's (experimental) aiohttp download handler, on the asyncio reactor it needs.
AIOHTTP_HANDLER = [
    "TWISTED_REACTOR=twisted.internet.asyncioreactor.AsyncioSelectorReactor",
    'DOWNLOAD_HANDLERS={"http": "scrapy.core.downloader.handlers._aiohttp.AiohttpDownloadHandler", '
    '"https": "scrapy.core.downloader.handlers._aiohttp.AiohttpDownloadHandler"}',
]
# img2dataset's jobs (only with --img2dataset) keep one of the two outputs: each is counted and
# verified on the one it keeps.
ONE_OUTPUT = {"img2dataset-thumbs": "thumbs", "img2dataset-originals": "originals"}
# Scrapy with imgcrawl's settings fetching every image and storing nothing (fetch_spider.py):
# counted by the requests the server answered, since it keeps nothing.
FETCH_ONLY = "fetch-only"
SERIAL = {"get", "session"}  # run on a URL prefix: at one image per round trip they take minutes
PEER_CONNECTIONS = 32


@dataclass
class Server:
    """The benchmark site in its own process."""

    workload: Workload
    corpus: Path
    proc: subprocess.Popen | None = None
    base: str = ""

    def __enter__(self) -> "Server":
        w = self.workload
        self.proc = subprocess.Popen(
            [PY, str(BENCH / "server.py"), str(self.corpus), "--images", str(w.images),
             "--latency", str(w.latency_ms), "--connect", str(w.connect_ms)],
            stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline().split()
        if line[:1] != ["READY"]:
            self.proc.kill()
            raise RuntimeError(f"benchmark server did not start: {line}")
        self.base = f"http://127.0.0.1:{line[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def call(self, path: str, method: str = "GET") -> bytes:
        with urllib.request.urlopen(urllib.request.Request(self.base + path, method=method), timeout=60) as r:
            return r.read()

    def stats(self) -> dict:
        return json.loads(self.call("/__stats"))

    def reset(self) -> None:
        self.call("/__reset", "POST")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[tuple[int, int, int, float]]:
    """(pid, depth below ``pid``, resident kB, CPU seconds so far) of a process and all its
    descendants (workers included)."""
    found, stack = [], [(pid, 0)]
    while stack:
        p, depth = stack.pop()
        try:
            rss = sum(int(line.split()[1]) for line in Path(f"/proc/{p}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
            # utime and stime, the 14th and 15th fields (the 2nd, the name, may hold spaces).
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            found.append((p, depth, rss, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS))
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [(int(c), depth + 1) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


@dataclass
class Measured:
    wall: float
    returncode: int
    cpu_percent: float = 0.0
    max_rss_mb: float = 0.0  # largest single process (what /usr/bin/time -v reports)
    tree_rss_mb: float = 0.0  # peak sum over the process tree (sampled every 0.1 s)
    cpu_s: float = 0.0  # user + system of the whole tree, from time -v
    # The children of the measured process (imgcrawl's workers), their CPU as last sampled:
    # main-process CPU is cpu_s minus this.
    children_cpu_s: float = 0.0


def measure(cmd: list[str], cwd: Path, env: dict, log: Path, timeout: float) -> Measured:
    timing = log.with_suffix(".time")
    peak, children_cpu = 0, {}
    with log.open("w") as logf:
        start = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(timing), *cmd],
                                cwd=cwd, env=env, stdout=logf, stderr=subprocess.STDOUT)
        deadline = start + timeout
        while proc.poll() is None:
            tree = process_tree(proc.pid)  # depth 0 is /usr/bin/time, 1 the command
            peak = max(peak, sum(rss for _, _, rss, _ in tree))
            children_cpu.update({p: cpu for p, depth, _, cpu in tree if depth >= 2})
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.1)
        wall = time.perf_counter() - start
    result = Measured(wall, proc.returncode, tree_rss_mb=peak / 1024,
                      children_cpu_s=sum(children_cpu.values()))
    for line in timing.read_text().splitlines() if timing.exists() else []:
        key, _, value = line.strip().partition(": ")
        if key == "Percent of CPU this job got":
            result.cpu_percent = float(value.rstrip("%") or 0)
        elif key in ("User time (seconds)", "System time (seconds)"):
            result.cpu_s += float(value)
        elif key == "Maximum resident set size (kbytes)":
            result.max_rss_mb = int(value) / 1024
    return result


def setting_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The ``--set NAME=VALUE`` settings given to imgcrawl."""
    return dict(s.split("=", 1) for s in args.set)


def imgcrawl_concurrency(overrides: dict[str, str]) -> int:
    from imgcrawl import settings

    return int(overrides.get("CONCURRENT_REQUESTS_PER_DOMAIN", settings.CONCURRENT_REQUESTS_PER_DOMAIN))


def contender_command(name: str, base: str, urls_file: Path, corpus: Path,
                      out: Path, args: argparse.Namespace) -> tuple[list[str], Path, dict]:
    env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(REPO)
    gallery = f"{base}/gallery/"
    if name in ("imgcrawl", "imgcrawl-aiohttp", FETCH_ONLY):
        env["PYTHONPATH"] = str(args.checkout)
        # In the project, so imgcrawl's settings apply.
        spider = (["runspider", str(BENCH / "fetch_spider.py"), "-a", f"urls={urls_file}"] if name == FETCH_ONLY
                  else ["crawl", "gallery", "-a", f"url={gallery}"])
        # The benchmark site is on 127.0.0.1, which the SSRF guard refuses by default.
        cmd = [PY, "-m", "scrapy", *spider, "-s", f"IMAGES_STORE={out}", "-s", "IMGCRAWL_ALLOW_PRIVATE=True"]
        for setting in args.set + (AIOHTTP_HANDLER if name == "imgcrawl-aiohttp" else []):
            cmd += ["-s", setting]
        return cmd, args.checkout, env
    if name == "stock":
        # Run outside the project: Scrapy looks for scrapy.cfg in every parent of the cwd, and
        # finding ours would give stock Scrapy imgcrawl's tuned settings.
        return ([PY, "-m", "scrapy", "runspider", str(BENCH / "stock_spider.py"), "-a", f"url={gallery}",
                 "-s", f"IMAGES_STORE={out}"], Path(tempfile.mkdtemp(prefix="stock-")), env)
    if name.startswith("floor-"):
        return ([PY, str(BENCH / "floor.py"), str(corpus), str(urls_file), str(out),
                 "--decode", name.split("-", 1)[1]], out.parent, env)
    if name == "aiohttp-equal":  # aiohttp at imgcrawl's per-host connection count
        return ([PY, str(BENCH / "peers.py"), "aiohttp", str(urls_file), str(out), "--connections",
                 str(imgcrawl_concurrency(setting_overrides(args)))], out.parent, env)
    cmd = [PY, str(BENCH / "peers.py"), name, str(urls_file), str(out)]
    if name in ONE_OUTPUT:
        cmd += ["--img2dataset", args.img2dataset]
    if name in SERIAL:
        cmd += ["--limit", str(args.prefix)]
    return cmd, out.parent, env


def run_workload(w: Workload, contenders: list[str], args: argparse.Namespace) -> dict:
    if args.images:  # a smaller run (smoke test): a corpus of that size, in args.out
        w = replace(w, images=args.images)
    corpus = ensure_corpus(w.corpus, args.out, count=args.images)
    entries = load_corpus(corpus)
    root = args.out / w.name
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {"workload": w.__dict__, "load_before": os.getloadavg(), "contenders": {}}
    overrides = setting_overrides(args)
    with Server(w, corpus) as server:
        urls = server.call("/__urls").decode().split()
        urls_file = root / "urls.txt"
        urls_file.write_text("\n".join(urls) + "\n")
        sha = {u: entries[n % len(entries)]["sha256"] for n, u in enumerate(urls)}
        for name in contenders:
            out = root / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            expected = dict(list(sha.items())[: args.prefix]) if name in SERIAL else sha
            cmd, cwd, env = contender_command(name, server.base, urls_file, corpus, out, args)
            server.reset()
            print(f"[{w.name}] {name}: {len(expected)} images ...", flush=True)
            m = measure(cmd, cwd, env, root / f"{name}.log", args.timeout)
            if name == "stock":
                shutil.rmtree(cwd, ignore_errors=True)  # its throwaway working directory
            verdict = verify(out, expected)
            kept = ONE_OUTPUT.get(name)
            stored = verdict.thumbs_ok if kept == "thumbs" else verdict.originals_present
            verified = {"thumbs": verdict.thumbs_ok == verdict.expected,
                        "originals": verdict.originals_exact == verdict.expected}.get(kept, verdict.ok)
            net = server.stats()
            summary = verdict.summary()
            if name == FETCH_ONLY:
                stored = min(net["requests"], len(expected))
                verified = net["requests"] >= len(expected)
                summary = f"{net['requests']} fetched, nothing stored"
            row = {
                "images": len(expected),
                "prefix": name in SERIAL,
                "wall_s": round(m.wall, 2),
                # Only what was really stored counts (a crawl that stops early is not fast).
                "images_per_s": round(stored / m.wall, 1),
                "cpu_percent": m.cpu_percent,
                "cpu_s": round(m.cpu_s, 2),
                "children_cpu_s": round(m.children_cpu_s, 2),
                "max_rss_mb": round(m.max_rss_mb, 1),
                "tree_rss_mb": round(m.tree_rss_mb, 1),
                "returncode": m.returncode,
                "verified": verified,
                "verify": summary,
                **({} if name.startswith("floor-") else net),
            }
            results["contenders"][name] = row
            print(f"    {row['images_per_s']} images/s, {row['wall_s']} s, rc={m.returncode}, "
                  f"{summary}, {net}", flush=True)
    conc = imgcrawl_concurrency(overrides)
    results["network_bound"] = {
        "imgcrawl": round(conc * 1000 / w.latency_ms, 1),
        "peers_32": round(PEER_CONNECTIONS * 1000 / w.latency_ms, 1),
        "imgcrawl_concurrency": conc,
    }
    results["imgcrawl_settings"] = overrides
    results["imgcrawl_checkout"] = subprocess.run(
        ["git", "-C", str(args.checkout), "log", "-1", "--format=%h %s"], capture_output=True, text=True,
    ).stdout.strip()
    results["load_after"] = os.getloadavg()
    return results


def table(results: dict) -> str:
    w = results["workload"]
    rows = results["contenders"]
    ours = rows.get("imgcrawl", {}).get("images_per_s")
    lines = [
        f"**{w['name']}**: {w['images']} images, L = {w['latency_ms']} ms, C = {w['connect_ms']} ms; "
        f"load average before/after {results['load_before'][0]:.1f}/{results['load_after'][0]:.1f}",
        "",
        "| contender | images | images/s | imgcrawl ÷ it | CPU % | images per CPU-s | imgcrawl ÷ it per CPU-s "
        "| peak RSS MB (largest proc / tree) | connections / requests "
        "| client turnaround ms (mean / p99) | output verified |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # On a shared machine a contender gets the CPU share the scheduler gives it; images per
    # CPU-second is the load-independent view of the same run.
    per_cpu = {n: r["images_per_s"] * 100 / r["cpu_percent"] if r["cpu_percent"] else 0 for n, r in rows.items()}
    for name, r in rows.items():
        label = f"{name} (first {r['images']} URLs)" if r["prefix"] else name
        if name in ONE_OUTPUT:
            label = f"{name} ({ONE_OUTPUT[name]} only)"
        if name == "aiohttp-equal":
            label = f"aiohttp ({results['network_bound']['imgcrawl_concurrency']} connections, as imgcrawl)"
        other = name != "imgcrawl" and ours
        ratio = f"{ours / r['images_per_s']:.2f}×" if other and r["images_per_s"] else ""
        cpu_ratio = f"{per_cpu['imgcrawl'] / per_cpu[name]:.2f}×" if other and per_cpu[name] else ""
        net = f"{r['connections']} / {r['requests']}" if "connections" in r else "–"
        # The server's view: from a response to the next request on its connection.
        turnaround = f"{r['turnaround_ms_mean']} / {r['turnaround_ms_p99']}" if "turnaround_ms_mean" in r else "–"
        lines.append(
            f"| {label} | {r['images']} | {r['images_per_s']} | {ratio} | {r['cpu_percent']:.0f} "
            f"| {per_cpu[name]:.0f} | {cpu_ratio} | {r['max_rss_mb']:.0f} / {r['tree_rss_mb']:.0f} | {net} "
            f"| {turnaround} | {r['verify']} |"
        )
    bound = results["network_bound"]
    lines.append(
        f"| network bound (imgcrawl, {bound['imgcrawl_concurrency']} conn ÷ L) | | {bound['imgcrawl']} "
        f"| {ours / bound['imgcrawl']:.2f}× | | | | | | | |" if ours else ""
    )
    lines.append(f"| network bound (32 conn ÷ L) | | {bound['peers_32']} | | | | | | | | |")
    return "\n".join(line for line in lines if line) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=[*WORKLOADS, "all"])
    parser.add_argument("--only", help="comma-separated contenders")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for imgcrawl (repeatable)")
    parser.add_argument("--prefix", type=int, default=300, help="URLs for the serial recipes")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per contender")
    parser.add_argument("--images", type=int, help="a smaller workload of N images (smoke tests)")
    parser.add_argument("--out", type=Path, default=OUT, help="corpus and results directory")
    parser.add_argument("--report", action="store_true", help="print the saved tables, run nothing")
    parser.add_argument("--img2dataset", metavar="PYTHON",
                        help="the python of a venv with img2dataset: adds its two jobs as contenders")
    parser.add_argument("--checkout", type=Path, default=REPO,
                        help="run imgcrawl from this checkout (e.g. a git worktree of an older commit)")
    args = parser.parse_args(argv)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    for name in names:
        if args.report:
            print(table(json.loads((args.out / name / "results.json").read_text())))
            continue
        contenders = args.only.split(",") if args.only else DEFAULT_CONTENDERS[name]
        if args.img2dataset and not args.only and name != "W1x10":
            contenders = [*contenders, *ONE_OUTPUT]
        if any(c in ONE_OUTPUT for c in contenders) and not args.img2dataset:
            parser.error("the img2dataset contenders need --img2dataset PYTHON")
        results = run_workload(WORKLOADS[name], contenders, args)
        text = table(results)
        (args.out / name / "results.json").write_text(json.dumps(results, indent=1))
        (args.out / name / "results.md").write_text(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
