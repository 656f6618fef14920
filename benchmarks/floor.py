"""The CPU floor: imgcrawl's per-image work (decode, 256 px thumbnail, write original and
thumbnail) on all cores with no network. ``--decode draft`` is imgcrawl's own
:func:`imgcrawl.imaging.process_image` (reduced-size JPEG decode); ``--decode full`` decodes
every pixel first.

``python benchmarks/floor.py CORPUS_DIR URLS_FILE OUT_DIR --decode draft|full``
"""

from __future__ import annotations

import argparse
import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

from imgcrawl import imaging

THUMB = (256, 256)


def full_decode(data: bytes, original: str, thumb: str) -> None:
    """process_image's steps without draft mode: every pixel decoded, then resized."""
    image = imaging.open_image(data)
    hashlib.sha256(data).digest()  # process_image hashes the original too: same cost
    image.load()
    base = imaging.to_rgb(ImageOps.exif_transpose(image))
    base.thumbnail(THUMB, Image.Resampling.LANCZOS)
    imaging.atomic_write(original, data)
    imaging.atomic_write(thumb, imaging.encode_jpeg(base))


def work(job: tuple[str, str, str, str, str]) -> None:
    source, url, ext, out, decode = job
    data = Path(source).read_bytes()
    guid = hashlib.sha1(url.encode()).hexdigest()  # noqa: S324 - a name, as Scrapy names files
    original, thumb = f"{out}/full/{guid}.{ext}", f"{out}/thumbs/small/{guid}.jpg"
    if decode == "full":
        full_decode(data, original, thumb)
    else:
        imaging.process_image(data, original, {"small": (THUMB, thumb)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("urls", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--decode", choices=("draft", "full"), default="draft")
    args = parser.parse_args(argv)
    files = sorted((args.corpus / "files").iterdir(), key=lambda p: int(p.stem))
    jobs = []
    for url in args.urls.read_text().split():
        n = int(url.rsplit("/", 1)[1].split(".")[0])
        source = files[n % len(files)]
        jobs.append((str(source), url, source.suffix[1:], str(args.out), args.decode))
    (args.out / "full").mkdir(parents=True, exist_ok=True)
    (args.out / "thumbs" / "small").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        for _ in pool.map(work, jobs, chunksize=16):
            pass


if __name__ == "__main__":
    main()
