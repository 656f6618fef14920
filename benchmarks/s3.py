"""What an S3 store costs, against a local SeaweedFS (the tests' server): ``python benchmarks/s3.py``.

* ``clients``: one process uploading objects of typical image sizes, through botocore's
  ``put_object`` (what imgcrawl uses) and through boto3's ``upload_fileobj`` (s3transfer):
  objects/s, MiB/s and the client's CPU per object, with 1 and 8 threads.
* ``crawl``: the W1 mix (``--images`` of it, from benchmarks/corpus.py) crawled into a
  local directory and into a bucket, then crawled again (every image already stored: the
  bucket's index checks each original and thumbnail with a HEAD): wall time, CPU, and the
  output verified byte for byte (the bucket's objects are downloaded to check them).

Results are printed as Markdown tables (docs/s3.md quotes them).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]

from corpus import OUT, WORKLOADS, ensure_corpus, load_corpus  # noqa: E402
from run import PY, REPO, Server, measure  # noqa: E402
from seaweedfs import SeaweedFS  # noqa: E402
from verify import verify  # noqa: E402

# scrapy crawl, saying at exit the CPU seconds of the crawl process itself and of its workers.
CRAWL = (
    "import atexit, resource, sys\n"
    "def say():\n"
    "    own, workers = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))\n"
    "    print('CPU', own.ru_utime + own.ru_stime, workers.ru_utime + workers.ru_stime, file=sys.stderr)\n"
    "atexit.register(say)\n"
    "from scrapy.cmdline import execute\n"
    "execute(['scrapy', *sys.argv[1:]])\n"
)
SIZES = {"thumbnail 16 KiB": 16 << 10, "web image 200 KiB": 200 << 10, "photo 2 MiB": 2 << 20, "photo 8 MiB": 8 << 20}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu(server: SeaweedFS) -> float:
    """CPU seconds the S3 server has used (it shares this machine's cores with the crawl)."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clients(server: SeaweedFS) -> None:
    import boto3

    bucket = server.bucket("bench-clients")
    botocore_client = server.client("crawler")
    settings = server.settings("crawler")
    boto3_client = boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    uploads = {
        "botocore put_object": lambda key, body: botocore_client.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="image/jpeg"),
        "boto3 upload_fileobj": lambda key, body: boto3_client.upload_fileobj(
            io.BytesIO(body), bucket, key, ExtraArgs={"ContentType": "image/jpeg"}),
    }
    print("| client | object | threads | objects/s | MiB/s | client CPU ms/object |\n|---|---|---|---|---|---|")
    for label, size in SIZES.items():
        body = os.urandom(size)
        count = max(16, min(400, (64 << 20) // size))
        for name, upload in uploads.items():
            for threads in (1, 8):
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda i: upload(f"warm/{i}", body), range(threads)))
                    started, used = time.perf_counter(), cpu()
                    list(pool.map(lambda i: upload(f"{name}/{size}/{i}", body), range(count)))
                    wall, used = time.perf_counter() - started, cpu() - used
                print(f"| {name} | {label} | {threads} | {count / wall:.0f} | {count * size / wall / 2**20:.1f} | "
                      f"{used / count * 1000:.2f} |", flush=True)


def download(server: SeaweedFS, bucket: str, into: Path) -> None:
    for key, obj in server.objects(bucket).items():
        path = into / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(obj["Body"])


def crawl(server: SeaweedFS, images: int, out: Path) -> None:
    workload = replace(WORKLOADS["W1"], images=images)
    corpus = ensure_corpus(workload.corpus, out, count=images)
    entries = load_corpus(corpus)
    bucket = server.bucket("bench-crawl")
    root = Path(tempfile.mkdtemp(prefix="imgcrawl-s3-bench-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(root / "cache")}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    stores = {"local directory": str(root / "local"), "S3 bucket": f"s3://{bucket}/w1/"}
    print("\n| store | crawl | images | wall s | images/s | CPU ms/image: crawl process | workers | S3 server | "
          "verified |\n|---|---|---|---|---|---|---|---|---|")
    with Server(workload, corpus) as site:
        urls = site.call("/__urls").decode().split()
        expected = {u: entries[n % len(entries)]["sha256"] for n, u in enumerate(urls)}
        for store_name, store in stores.items():
            for run in ("first", "again"):
                cmd = [PY, "-c", CRAWL, "crawl", "gallery", "-a", f"url={site.base}/gallery/",
                       "-s", f"IMAGES_STORE={store}", "-s", "IMGCRAWL_ALLOW_PRIVATE=True",
                       *(f"-s{k}={v}" for k, v in server.settings().items() if store.startswith("s3://"))]
                site.reset()
                log = root / f"{store_name}-{run}.log"
                before = server_cpu(server)
                m = measure(cmd, REPO, env, log, 1800)
                served = (server_cpu(server) - before) * 1000 / images
                own, workers = (float(v) * 1000 / images for v in log.read_text().rsplit("\nCPU ", 1)[1].split())
                if run == "first":
                    local = Path(store)
                    if store.startswith("s3://"):  # checked as downloaded from the server
                        download(server, bucket, root / "downloaded")
                        local = root / "downloaded" / "w1"
                    outcome = verify(local, expected).summary()
                else:
                    outcome = f"{site.stats()['requests']} requests to the site (pages, robots.txt)"
                print(f"| {store_name} | {run} | {images} | {m.wall:.1f} | {images / m.wall:.1f} | {own:.1f} | "
                      f"{workers:.1f} | {served:.1f} | {outcome} |", flush=True)


def main() -> None:
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["clients", "crawl", "all"], nargs="?", default="all")
    parser.add_argument("--images", type=int, default=300, help="W1 images for the crawl (default 300)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgcrawl-seaweedfs-") as tmp:
        server = SeaweedFS(Path(tmp)).start()
        try:
            if args.what in ("clients", "all"):
                clients(server)
            if args.what in ("crawl", "all"):
                crawl(server, args.images, OUT)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
