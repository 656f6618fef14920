"""Near-duplicates: the perceptual hash of photo variants vs distinct photos, the lookup
that finds them, and crawls that mark (or skip) them, checked on the stored files."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from PIL import Image, ImageDraw, ImageFilter

from conftest import LocalSite, run_crawl
from imgcrawl import imaging, settings
from imgcrawl.demo import encode
from imgcrawl.index import LocalFiles, RedisIndex, StoredImages
from imgcrawl.phash import NearIndex, distance, from_hex

THRESHOLD = settings.IMGCRAWL_NEAR_DUPLICATE_DISTANCE


def photo(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """Photo-like: colour fields at three scales (sky, shapes, texture), a few objects, soft."""
    rng = random.Random(seed)
    layers = []
    for cells in ((4, 3), (12, 9), (40, 30)):
        field = Image.frombytes("RGB", cells, bytes(rng.randrange(256) for _ in range(cells[0] * cells[1] * 3)))
        layers.append(field.resize(size, Image.Resampling.BICUBIC))
    image = Image.blend(Image.blend(layers[0], layers[1], 0.4), layers[2], 0.2)
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        w, h = rng.randrange(20, size[0] // 2), rng.randrange(20, size[1] // 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image.filter(ImageFilter.GaussianBlur(1.5))



def variants(image: Image.Image) -> dict[str, bytes]:
    """What galleries repeat: half size, recompressed at q55, as PNG, 5 % cropped off."""
    w, h = image.size
    return {
        "resize50": encode(image.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "JPEG", quality=90),
        "jpeg-q55": encode(image, "JPEG", quality=55),
        "png": encode(image, "PNG"),
        "crop5": encode(image.crop((w // 40, h // 40, w - w // 40, h - h // 40)), "JPEG", quality=90),
    }


def pipeline_hash(data: bytes, tmp_path) -> int:
    """The hash as the pipeline gets it: from the worker's thumbnail decode."""
    return from_hex(imaging.process_image(data, None, {"small": ((256, 256), str(tmp_path / "t.jpg"))})["phash"])


def test_variants_fall_within_the_threshold_and_distinct_photos_beyond(tmp_path):
    originals = {seed: photo(seed) for seed in range(12)}
    hashes = {seed: pipeline_hash(encode(image, "JPEG", quality=90), tmp_path) for seed, image in originals.items()}
    for seed, image in originals.items():
        for kind, data in variants(image).items():
            assert distance(hashes[seed], pipeline_hash(data, tmp_path)) <= THRESHOLD, (seed, kind)
    apart = [distance(hashes[a], hashes[b]) for a, b in itertools.combinations(hashes, 2)]
    assert min(apart) > THRESHOLD, sorted(apart)[:5]


def test_an_image_without_thumbnails_is_hashed_too(tmp_path):
    """No IMAGES_THUMBS (or a small JPEG that is its own thumbnail): hashed from the small
    decode that proves the file whole, close to the hash the thumbnail gives."""
    data = encode(photo(1), "JPEG", quality=90)
    alone = from_hex(imaging.process_image(data, None, {})["phash"])
    assert distance(alone, pipeline_hash(data, tmp_path)) <= THRESHOLD // 2
    assert imaging.process_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>", None, {})["phash"] is None


def test_near_index_finds_what_a_linear_scan_finds():
    rng = random.Random(7)
    index = NearIndex(THRESHOLD)
    hashes = {f"u{n}": rng.getrandbits(64) for n in range(5000)}
    for key, value in hashes.items():
        index.add(key, value)
    # Queries near some hashes (a few bits flipped, up to past the threshold) and random ones.
    queries = [hashes[f"u{n}"] ^ sum(1 << b for b in rng.sample(range(64), n % (THRESHOLD + 3))) for n in range(300)]
    queries += [rng.getrandbits(64) for _ in range(100)]
    for query in queries:
        best = min((distance(query, value), n) for n, value in enumerate(hashes.values()))
        expected = (f"u{best[1]}", best[0]) if best[0] <= THRESHOLD else None
        assert index.nearest(query) == expected
    index.add("u0", hashes["u1"])  # moved: found under its new hash only, the earlier key first
    assert index.nearest(hashes["u1"]) == ("u1", 0)
    index.remove("u1")
    assert index.nearest(hashes["u1"]) == ("u0", 0)
    assert index.nearest(hashes["u1"], exclude="u0") is None


def test_workers_sharing_a_redis_index_find_each_others_images(redis_url, tmp_path):
    hashes = {name: pipeline_hash(data, tmp_path) for name, data in
              {"original": encode(photo(2), "JPEG", quality=90), **variants(photo(2)),
               "other": encode(photo(3), "JPEG", quality=90)}.items()}

    def record(name: str) -> dict:
        return {"url": f"http://site/{name}.jpg", "path": f"full/{name}.jpg", "thumbs": {},
                "sha256": name, "phash": f"{hashes[name]:016x}"}

    one, two = (StoredImages(RedisIndex(redis_url), LocalFiles(tmp_path), "sig", 1e9, THRESHOLD) for _ in range(2))
    try:
        kept, how = one.keep(record("original"))
        assert how == "stored" and "near_duplicate_of" not in kept
        for name in ("resize50", "png", "crop5"):
            kept, _ = two.keep(record(name))
            assert kept["near_duplicate_of"] == "http://site/original.jpg", name
        assert "near_duplicate_of" not in two.keep(record("other"))[0]
        # And back: the first worker sees what the second logged.
        assert one.keep(record("jpeg-q55"))[0]["near_duplicate_of"] == "http://site/original.jpg"
    finally:
        one.index.close()
        two.index.close()


@pytest.fixture
def galleries():
    """/first/: photos 0-2. /second/: photo 0's variants and photo 3."""
    first = {f"/img/p{n}.jpg": encode(photo(n), "JPEG", quality=90) for n in range(3)}
    second = {f"/img/v-{kind}.{'png' if kind == 'png' else 'jpg'}": data for kind, data in variants(photo(0)).items()}
    second["/img/p3.jpg"] = encode(photo(3), "JPEG", quality=90)
    files = {}
    for page, images in (("/first/", first), ("/second/", second)):
        files[page] = ("text/html", "".join(f'<img src="{p}">' for p in images).encode())
        files.update({p: ("image/png" if p.endswith(".png") else "image/jpeg", body) for p, body in images.items()})
    site = LocalSite(files).start()
    site.first, site.second = first, second
    yield site
    site.stop()


def crawl(site, tmp_path, page: str, **settings):
    result = run_crawl(tmp_path, "-a", f"url={site.url(page)}", store=tmp_path / "store",
                       settings={"IMGCRAWL_WORKER_POOL": "thread", **settings})
    assert result.returncode == 0, result.log[-3000:]
    assert "Traceback" not in result.log
    return result


def test_a_crawl_marks_near_duplicates_of_images_an_earlier_crawl_stored(galleries, tmp_path):
    crawl(galleries, tmp_path, "/first/")
    result = crawl(galleries, tmp_path, "/second/")
    lines = {line["url"]: line for line in result.manifest()}
    original = galleries.url("/img/p0.jpg")
    assert "near_duplicate_of" not in lines[original] or lines[original]["near_duplicate_of"] is None
    for path, body in galleries.second.items():
        line = lines[galleries.url(path)]
        assert line["status"] == "downloaded" and (result.store / line["path"]).read_bytes() == body
        assert len(line["phash"]) == 16
        expected = None if path == "/img/p3.jpg" else original
        assert line.get("near_duplicate_of") == expected, line
    assert "near-duplicates: 4" in result.log
    assert "'imgcrawl/near_duplicates': 4" in result.log
    sheet = (result.store / "index.html").read_text()
    assert "4 near-duplicates" in sheet
    records = json.loads(sheet.split('type="application/json">', 1)[1].split("</script>", 1)[0])
    assert sum(1 for r in records if r["n"] == original) == 4


def test_skipping_near_duplicates_stores_only_the_first(galleries, tmp_path):
    crawl(galleries, tmp_path, "/first/", IMGCRAWL_SKIP_NEAR_DUPLICATES=True)
    result = crawl(galleries, tmp_path, "/second/", IMGCRAWL_SKIP_NEAR_DUPLICATES=True)
    lines = {line["url"]: line for line in result.manifest()}
    original = lines[galleries.url("/img/p0.jpg")]
    for path in galleries.second:
        line = lines[galleries.url(path)]
        if path == "/img/p3.jpg":
            assert line["status"] == "downloaded"
            continue
        assert (line["status"], line["reason"], line["near_duplicate_of"]) == (
            "skipped", "near-duplicate", galleries.url("/img/p0.jpg")), line
        assert (line["path"], line["thumbs"]) == (original["path"], original["thumbs"])
    # Files: the three first photos and photo 3, nothing of the variants.
    stored = sorted(p.read_bytes() for p in (result.store / "full").iterdir())
    assert stored == sorted([*galleries.first.values(), galleries.second["/img/p3.jpg"]])
    assert len(list((result.store / "thumbs" / "small").iterdir())) == 4
    assert "near-duplicates: 4 (4 not stored" in result.log
