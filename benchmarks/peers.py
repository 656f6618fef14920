"""The well-known recipes imgcrawl is measured against, each doing the same job per image:
fetch it, store the original bytes, write one 256 px JPEG thumbnail.

``python benchmarks/peers.py RECIPE URLS_FILE OUT_DIR [--limit N]`` with RECIPE one of
``get`` (``requests.get`` per image), ``session`` (one ``requests.Session``), ``threadpool``
(``ThreadPoolExecutor(32)``, a Session per thread), ``aiohttp`` (one ``ClientSession``,
``asyncio.gather`` at 32 connections); ``--connections N`` changes the 32 of the last two. They get the image URL list
directly: no crawling.
Files are named as Scrapy names them (``full/<sha1 of url>.<ext>``,
``thumbs/small/<sha1 of url>.jpg``) so one verifier checks every contender.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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


RECIPES = {"get": run_get, "session": run_session, "threadpool": run_threadpool, "aiohttp": run_aiohttp}
CONCURRENT = {"threadpool", "aiohttp"}  # the recipes with a connection count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=RECIPES)
    parser.add_argument("urls", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, help="only the first N URLs (slow serial recipes)")
    parser.add_argument("--connections", type=int,
                        help="connections of the threadpool and aiohttp recipes (default 32)")
    args = parser.parse_args(argv)
    if args.connections and args.recipe not in CONCURRENT:
        parser.error(f"--connections: the {args.recipe} recipe uses one connection at a time")
    urls = args.urls.read_text().split()[: args.limit]
    (args.out / "full").mkdir(parents=True, exist_ok=True)
    (args.out / "thumbs" / "small").mkdir(parents=True, exist_ok=True)
    RECIPES[args.recipe](urls, args.out, **({"connections": args.connections} if args.connections else {}))


if __name__ == "__main__":
    main()
