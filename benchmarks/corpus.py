"""The benchmark corpus: seeded images generated once and cached under ``benchmarks/out/``.

A corpus directory holds ``files/<n>.<ext>`` and ``corpus.json`` (one entry per image:
file, content type, size, sha256). W1x10 serves W1's files ten times under distinct URLs,
so it is W1's exact mix at 10x the length without another 2.9 GB of generation.
"""

from __future__ import annotations

import hashlib
import json
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "out"
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp"}


@dataclass(frozen=True)
class Workload:
    name: str
    images: int  # URLs served
    corpus: str  # which generated corpus backs them
    latency_ms: int  # every request
    connect_ms: int  # extra, first request on a new connection


WORKLOADS = {
    "W1": Workload("W1", 2_000, "photos", 30, 60),
    "W2": Workload("W2", 20_000, "small", 50, 100),
    "W1x10": Workload("W1x10", 20_000, "photos", 30, 60),
}
CORPUS_SIZES = {"photos": 2_000, "small": 20_000}


_GRAIN: list[Image.Image] = []


def _photo(rng: random.Random, size: tuple[int, int], grain: float) -> Image.Image:
    """Smooth colour fields plus sensor-like grain: compresses like a photo, not a flat fill."""
    small = Image.frombytes("RGB", (4, 3), bytes(rng.randrange(256) for _ in range(36)))
    base = small.resize(size, Image.Resampling.BICUBIC)
    if not _GRAIN:  # one big noise field per process, cropped at random offsets (fast)
        _GRAIN.append(Image.effect_noise((3072, 3072), 20).convert("RGB"))
    x, y = rng.randrange(3072 - size[0] + 1), rng.randrange(3072 - size[1] + 1)
    return Image.blend(base, _GRAIN[0].crop((x, y, x + size[0], y + size[1])), grain)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _photo_kind(rng: random.Random) -> str:
    roll = rng.random()
    return "jpg" if roll < 0.84 else "png" if roll < 0.90 else "webp" if roll < 0.96 else "gif"


def make_photo(n: int) -> tuple[str, bytes]:
    """W1 mix: mostly JPEG 640-2048 px, some PNG with alpha, WebP, animated GIF."""
    rng = random.Random(f"photos-{n}")
    kind = _photo_kind(rng)
    width = rng.randrange(640, 2049)
    height = int(width * rng.choice((0.75, 0.667, 1.333, 1.5, 1.0)))
    if kind == "jpg":
        image = _photo(rng, (width, height), 0.07)
        exif = Image.Exif()
        if rng.random() < 0.1:  # some camera files need EXIF rotation
            exif[0x0112] = 6
        return kind, _encode(image, "JPEG", quality=rng.choice((82, 85, 90)), exif=exif)
    if kind == "webp":
        return kind, _encode(_photo(rng, (width, height), 0.15), "WEBP", quality=80)
    # PNG and GIF are kept smaller, as they are on real galleries.
    size = (width // 2, height // 2)
    if kind == "png":
        rgba = _photo(rng, size, 0.01).convert("RGBA")
        alpha = Image.new("L", size, 0)
        ImageDraw.Draw(alpha).ellipse((0, 0, *size), fill=255)
        rgba.putalpha(alpha)
        return kind, _encode(rgba, "PNG")
    frames = [_photo(rng, (size[0] // 2, size[1] // 2), 0.05).quantize(64) for _ in range(4)]
    return kind, _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def make_small(n: int) -> tuple[str, bytes]:
    """W2: small JPEGs (160-320 px, ~8 KB)."""
    rng = random.Random(f"small-{n}")
    width = rng.randrange(160, 321)
    height = int(width * rng.choice((0.75, 1.333, 1.0)))
    return "jpg", _encode(_photo(rng, (width, height), 0.14), "JPEG", quality=85)


def _write(args: tuple[str, int, Path]) -> dict:
    kind, n, root = args
    ext, data = (make_photo if kind == "photos" else make_small)(n)
    name = f"{n}.{ext}"
    (root / "files" / name).write_bytes(data)
    return {"file": name, "type": CONTENT_TYPES[ext], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def ensure_corpus(kind: str, out: Path = OUT, count: int | None = None) -> Path:
    """Generate the corpus ``kind`` (``photos`` or ``small``) once; return its directory."""
    count = count or CORPUS_SIZES[kind]
    root = out / f"corpus-{kind}-{count}"
    manifest = root / "corpus.json"
    if manifest.exists():
        return root
    (root / "files").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor() as pool:
        entries = list(pool.map(_write, [(kind, n, root) for n in range(count)], chunksize=32))
    manifest.write_text(json.dumps(entries))
    return root


def load_corpus(root: Path) -> list[dict]:
    return json.loads((root / "corpus.json").read_text())


if __name__ == "__main__":
    import sys

    for kind in sys.argv[1:] or CORPUS_SIZES:
        root = ensure_corpus(kind)
        entries = load_corpus(root)
        print(kind, len(entries), "images", sum(e["bytes"] for e in entries) // 2**20, "MiB", root)
