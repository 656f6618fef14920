"""The well-known recipes imgcrawl is measured against, each doing the same job per image:
fetch it, store the original bytes, write one 256 px JPEG thumbnail.

``python benchmarks/peers.py RECIPE URLS_FILE OUT_DIR [--limit N]`` with RECIPE one of
``get`` (``requests.get`` per image), ``session`` (one ``requests.Session``), ``threadpool``
(``ThreadPoolExecutor(32)``, a Session per thread), ``aiohttp`` (one ``ClientSession``,
``asyncio.gather`` at 32 connections); ``--connections N`` changes the 32 of the last two. They get the image URL list
directly: no crawling.

``img2dataset-thumbs`` and ``img2dataset-originals`` run img2dataset (PyPI; in a venv of its
own, given as ``--img2dataset PYTHON``: its dependencies are not the project's) as it is
used for image datasets: 2 processes x 32 threads, output as files. The thumbnails job keeps
256 px JPEGs only (no original); the originals job keeps the bytes as sent, decoding nothing.
Its ``<shard>/<key>.jpg`` files are then renamed to the names below.
Files are named as Scrapy names them (``full/<sha1 of url>.<ext>``,
``thumbs/small/<sha1 of url>.jpg``) so one verifier checks every contender.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

THUMB = (256, 256)
CONNECTIONS = 32


def save(url: str, body: bytes, out: Path) -> None:
    """The recipe's processing step: keep the bytes, thumbnail with Pillow, save as JPEG."""
    from PIL import Image

    guid = hashlib.sha1(url.encode()).hexdigest()  # noqa: S324 - a name
    (out / "full" / f"{guid}.{url.rsplit('.', 1)[1]}").write_bytes(body)
    image = Image.open(BytesIO(body))
    image.thumbnail(THUMB)
    image.convert("RGB").save(out / "thumbs" / "small" / f"{guid}.jpg", "JPEG", quality=85)


def run_get(urls: list[str], out: Path) -> None:
    import requests

    for url in urls:
        save(url, requests.get(url, timeout=30).content, out)


def run_session(urls: list[str], out: Path) -> None:
    import requests

    with requests.Session() as session:
        for url in urls:
            save(url, session.get(url, timeout=30).content, out)


def run_threadpool(urls: list[str], out: Path, connections: int = CONNECTIONS) -> None:
    import requests

    local = threading.local()

    def fetch(url: str) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        save(url, local.session.get(url, timeout=30).content, out)

    with ThreadPoolExecutor(connections) as pool:
        for _ in pool.map(fetch, urls):
            pass


def run_aiohttp(urls: list[str], out: Path, connections: int = CONNECTIONS) -> None:
    import aiohttp

    async def fetch(session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url) as response:
            body = await response.read()
        save(url, body, out)  # the recipe processes inline, on the event loop

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(fetch(session, u) for u in urls))

    asyncio.run(main())


# img2dataset's command-line options for each job; the thumbnail matches the others' 256 px box.
IMG2DATASET_JOBS = {
    "img2dataset-thumbs": ["--image_size", "256", "--resize_mode", "keep_ratio_largest",
                           "--resize_only_if_bigger", "True", "--encode_format", "jpg", "--encode_quality", "85"],
    "img2dataset-originals": ["--disable_all_reencoding", "True"],
}


def run_img2dataset(urls: list[str], out: Path, job: str, python: str, connections: int = CONNECTIONS) -> None:
    """Run img2dataset on the URL list, then name its files as Scrapy does."""
    listing = out / "urls.txt"
    listing.write_text("\n".join(urls) + "\n")
    work = out / "img2dataset"
    subprocess.run(
        [str(Path(python).with_name("img2dataset")), "--url_list", str(listing), "--input_format", "txt",
         "--output_folder", str(work), "--output_format", "files", "--processes_count", "2",
         "--thread_count", str(connections), "--timeout", "30", *IMG2DATASET_JOBS[job]],
        # albumentations otherwise asks PyPI for a newer version of itself at import.
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}, check=True,
    )
    target = out / ("thumbs/small" if job == "img2dataset-thumbs" else "full")
    for meta in work.glob("*/*.json"):
        record = json.loads(meta.read_text())
        if record.get("status") == "success":
            guid = hashlib.sha1(record["url"].encode()).hexdigest()  # noqa: S324 - a name
            meta.with_suffix(".jpg").rename(target / f"{guid}.jpg")


RECIPES = {"get": run_get, "session": run_session, "threadpool": run_threadpool, "aiohttp": run_aiohttp}
CONCURRENT = {"threadpool", "aiohttp", *IMG2DATASET_JOBS}  # the recipes with a connection count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=[*RECIPES, *IMG2DATASET_JOBS])
    parser.add_argument("urls", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, help="only the first N URLs (slow serial recipes)")
    parser.add_argument("--connections", type=int,
                        help="connections of the threadpool and aiohttp recipes (default 32)")
    parser.add_argument("--img2dataset", metavar="PYTHON", help="the python of a venv with img2dataset")
    args = parser.parse_args(argv)
    if args.connections and args.recipe not in CONCURRENT:
        parser.error(f"--connections: the {args.recipe} recipe uses one connection at a time")
    urls = args.urls.read_text().split()[: args.limit]
    (args.out / "full").mkdir(parents=True, exist_ok=True)
    (args.out / "thumbs" / "small").mkdir(parents=True, exist_ok=True)
    options = {"connections": args.connections} if args.connections else {}
    if args.recipe in IMG2DATASET_JOBS:
        if not args.img2dataset:
            parser.error(f"{args.recipe} needs --img2dataset PYTHON")
        run_img2dataset(urls, args.out, args.recipe, args.img2dataset, **options)
    else:
        RECIPES[args.recipe](urls, args.out, **options)


if __name__ == "__main__":
    main()
