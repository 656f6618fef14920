"""imaging.py on its own: byte-exact originals, thumbnails, transparency, EXIF, animation."""

from __future__ import annotations

import hashlib
import struct
import time
from io import BytesIO

import pytest
from PIL import Image

from conftest import LocalSite, run_crawl
from imgcrawl import imaging


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def gradient(size=(800, 600)) -> Image.Image:
    image = Image.new("RGB", size)
    image.putdata([(x * 255 // size[0], y * 255 // size[1], 128) for y in range(size[1]) for x in range(size[0])])
    return image


def run(tmp_path, data: bytes, thumbs=None, **kw):
    thumbs = thumbs if thumbs is not None else {"small": (256, 256)}
    jobs = {name: (size, str(tmp_path / f"{name}.jpg")) for name, size in thumbs.items()}
    facts = imaging.process_image(data, str(tmp_path / "original"), jobs, **kw)
    return facts, {name: Image.open(tmp_path / f"{name}.jpg") for name in thumbs}


def test_original_is_stored_byte_exact_and_never_reencoded(tmp_path):
    data = encode(gradient(), "JPEG", quality=93)
    facts, _ = run(tmp_path, data)
    stored = (tmp_path / "original").read_bytes()
    assert stored == data
    assert facts["sha256"] == hashlib.sha256(data).hexdigest()
    assert (facts["format"], facts["width"], facts["height"], facts["bytes"]) == ("JPEG", 800, 600, len(data))


def test_thumbnails_keep_aspect_and_are_never_enlarged(tmp_path):
    data = encode(gradient((1000, 400)), "PNG")
    facts, thumbs = run(tmp_path, data, {"small": (256, 256), "huge": (4000, 4000)})
    assert thumbs["small"].size == (256, 102)
    assert thumbs["huge"].size == (1000, 400)
    assert thumbs["small"].format == "JPEG"
    assert facts["thumbs"] == {"huge": [1000, 400], "small": [256, 102]}


def test_jpeg_thumbnail_uses_reduced_size_decode(tmp_path):
    image = Image.open(BytesIO(encode(gradient((2048, 1536)), "JPEG")))
    imaging.make_thumbnails(image, {"small": (256, 256)})
    # draft() picked a DCT scale: the decoded image is smaller than the file's pixels.
    assert 256 <= image.size[0] < 2048


def test_transparent_pixels_come_out_white_not_their_hidden_colour(tmp_path):
    rgba = Image.new("RGBA", (300, 300), (255, 0, 0, 0))  # fully transparent, hidden red
    rgba.paste((0, 0, 255, 255), (100, 100, 200, 200))  # an opaque blue square
    _, thumbs = run(tmp_path, encode(rgba, "PNG"))
    thumb = thumbs["small"].convert("RGB")
    corner = thumb.getpixel((5, 5))
    centre = thumb.getpixel((128, 128))
    assert all(c > 245 for c in corner), corner
    assert centre[2] > 200 and centre[0] < 40, centre


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_other_transparent_modes_composited_on_white(tmp_path, mode):
    if mode == "LA":
        image = Image.new("LA", (200, 200), (0, 0))  # transparent black
    else:
        image = Image.new("P", (200, 200), 0)
        image.putpalette([0, 0, 0] + [255, 0, 0] * 255)
        image.info["transparency"] = 0
    data = encode(image, "PNG", **({"transparency": 0} if mode == "P" else {}))
    _, thumbs = run(tmp_path, data)
    assert all(c > 245 for c in thumbs["small"].convert("RGB").getpixel((10, 10)))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied_to_thumbnail(tmp_path, orientation):
    image = Image.new("RGB", (400, 200), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 100, 100))  # red mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(image, "JPEG", exif=exif)
    facts, thumbs = run(tmp_path, data)
    thumb = thumbs["small"]
    rotated = orientation in (6, 8)
    assert thumb.size == ((128, 256) if rotated else (256, 128))
    assert (facts["width"], facts["height"]) == ((200, 400) if rotated else (400, 200))
    # Where the red mark lands: 3 = 180°, 6 = 90° clockwise, 8 = 90° counter-clockwise.
    w, h = thumb.size
    spot = {3: (w - 10, h - 10), 6: (w - 10, 10), 8: (10, h - 10)}[orientation]
    r, g, b = thumb.getpixel(spot)
    assert r > 200 and g < 60 and b < 60, (orientation, (r, g, b))
    assert (tmp_path / "original").read_bytes() == data  # the original keeps its EXIF


def test_animated_gif_first_frame_and_frame_count(tmp_path):
    frames = [Image.new("RGB", (300, 300), colour) for colour in ((0, 200, 0), (200, 0, 0), (0, 0, 200))]
    buf = BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    facts, thumbs = run(tmp_path, buf.getvalue())
    assert facts["format"] == "GIF" and facts["frames"] == 3
    r, g, b = thumbs["small"].convert("RGB").getpixel((50, 50))
    assert g > 150 and r < 60 and b < 60  # green: the first frame


@pytest.mark.parametrize(("mode", "magic"), [("I;16", b"II*\x00"), ("I;16B", b"MM\x00*")])
def test_16_bit_grey_tiff_either_byte_order_scaled_to_8_bits(tmp_path, mode, magic):
    """Little- and big-endian 16-bit greyscale TIFFs: stored as served, and the thumbnail
    is the 16-bit ramp scaled to 8 bits (not clipped to white, not black)."""
    ramp = Image.new(mode, (512, 64))
    ramp.putdata([x * 65535 // 511 for _ in range(64) for x in range(512)])
    data = encode(ramp, "TIFF")
    assert data[:4] == magic and Image.open(BytesIO(data)).mode == mode
    facts, thumbs = run(tmp_path, data)
    assert (tmp_path / "original").read_bytes() == data
    assert (facts["format"], facts["width"], facts["height"]) == ("TIFF", 512, 64)
    thumb = thumbs["small"].convert("L")
    assert thumb.size == (256, 32)
    row = [thumb.getpixel((x, 16)) for x in (0, 64, 128, 192, 255)]
    # v / 256 at x = 0, 1/4, 1/2, 3/4, 1 of the ramp: 0, 64, 128, 191, 255 (JPEG blurs a little).
    for got, want in zip(row, (0, 64, 128, 191, 255)):
        assert abs(got - want) <= 6, row


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"<!doctype html><html><body>404</body></html>", "not-an-image"),
        (encode(gradient(), "JPEG")[:2000], "undecodable"),
        (encode(gradient(), "PNG")[:1500], "undecodable"),
    ],
)
def test_bad_images_raise_with_reason_and_write_nothing(tmp_path, data, reason):
    with pytest.raises(imaging.ImageError) as info:
        run(tmp_path, data)
    assert info.value.reason == reason
    assert list(tmp_path.iterdir()) == []


def test_too_many_pixels_refused_before_decoding(tmp_path):
    data = encode(Image.new("L", (4000, 4000)), "PNG")  # 16 MP, a few KB
    with pytest.raises(imaging.ImageError) as info:
        run(tmp_path, data, max_pixels=10_000_000)
    assert info.value.reason == "too-many-pixels"


def flat_grey_jpeg(width: int, height: int) -> bytes:
    """A mid-grey baseline JPEG of any size, made without its pixels: with libjpeg's standard
    tables every 8x8 block is 6 bits ("DC unchanged", "end of block"), so the data is one
    3-byte pattern per 4 blocks: 2 MB for 182 megapixels, decoded at 1/8 scale in ms."""
    blocks = -(-width // 8) * -(-height // 8)
    assert blocks % 4 == 0, "whole bytes of blocks only"
    data = encode(Image.new("L", (8, 8), 128), "JPEG")
    sof = data.index(b"\xff\xc0")
    data = data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]
    sos = data.index(b"\xff\xda")
    scan = sos + 2 + struct.unpack(">H", data[sos + 2: sos + 4])[0]
    return data[:scan] + b"\x28\xa2\x8a" * (blocks // 4) + b"\xff\xd9"


def test_max_pixels_above_pillows_own_limit_reaches_the_workers(tmp_path):
    """Pillow refuses over 2 x Image.MAX_IMAGE_PIXELS (~179 MP) in every process; a crawl with
    IMGCRAWL_MAX_PIXELS above that stores such an image, thumbnail included (the default
    process pool: the limit must reach the workers); at the default it fails, with reason."""
    side = 13_504  # 182 MP: over Pillow's refusal limit, twice its default MAX_IMAGE_PIXELS
    assert side * side > 2 * (1024 * 1024 * 1024 // 4 // 3)
    big = flat_grey_jpeg(side, side)
    site = LocalSite({"/g/": ("text/html", b'<html><body><img src="/big.jpg" alt="big"></body></html>'),
                      "/big.jpg": ("image/jpeg", big)}).start()
    try:
        started = time.monotonic()
        raised = run_crawl(tmp_path, "-a", f"url={site.url('/g/')}", store=tmp_path / "raised",
                           settings={"IMGCRAWL_MAX_PIXELS": 200_000_000, "IMGCRAWL_WORKERS": 1})
        print(f"\n182 MP image crawled and thumbnailed in {time.monotonic() - started:.1f} s")
        default = run_crawl(tmp_path, "-a", f"url={site.url('/g/')}", store=tmp_path / "default",
                            settings={"IMGCRAWL_WORKERS": 1})
    finally:
        site.stop()
    assert raised.returncode == 0, raised.log[-3000:]
    [line] = raised.manifest()
    assert (line["status"], line["width"], line["height"]) == ("downloaded", side, side), line
    assert (raised.store / line["path"]).read_bytes() == big
    with Image.open(raised.store / line["thumbs"]["small"]) as thumb:
        assert thumb.size == (256, 256) and thumb.convert("L").getextrema() == (128, 128)
    [line] = default.manifest()
    assert (line["status"], line["reason"]) == ("failed", "too-many-pixels"), line
    assert "Image failed (too-many-pixels)" in default.log and "Traceback" not in default.log


def test_without_thumbnails_still_validates(tmp_path):
    with pytest.raises(imaging.ImageError):
        run(tmp_path, encode(gradient(), "JPEG")[:1500], thumbs={})
    facts, _ = run(tmp_path, encode(gradient(), "WEBP"), thumbs={})
    assert facts["format"] == "WEBP" and facts["thumbs"] == {}


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("JPEG", "JPEG"), ("PNG", "PNG"), ("GIF", "GIF"), ("WEBP", "WEBP"), ("BMP", "BMP"), ("TIFF", "TIFF")],
)
def test_sniff_format_names_real_format(fmt, name):
    assert imaging.sniff_format(encode(gradient((20, 20)), fmt)[:64]) == name


def test_sniff_format_svg_and_unknown():
    assert imaging.sniff_format(b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>') == "SVG"
    assert imaging.sniff_format(b"<html>") is None


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "b.bin"
    imaging.atomic_write(target, b"first")
    imaging.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]  # no temp files left


def test_small_upright_jpeg_is_its_own_thumbnail(tmp_path):
    data = encode(gradient((200, 150)), "JPEG", quality=90)
    facts, thumbs = run(tmp_path, data)
    assert (tmp_path / "small.jpg").read_bytes() == data  # not re-encoded: no generation loss
    assert facts["thumbs"] == {"small": [200, 150]}
    # ... but not when it needs rotating, is too big for a box, or is not a JPEG.
    exif = Image.Exif()
    exif[0x0112] = 6
    for other, thumbs_ in [
        (encode(gradient((200, 150)), "JPEG", exif=exif), None),
        (data, {"small": (256, 256), "tiny": (64, 64)}),
        (encode(gradient((200, 150)), "PNG"), None),
    ]:
        facts, made = run(tmp_path, other, thumbs_)
        assert (tmp_path / "small.jpg").read_bytes() != other
        assert made["small"].format == "JPEG"
    assert facts["thumbs"] == {"small": [200, 150]}


def test_truncated_small_jpeg_is_refused_not_kept_as_thumbnail(tmp_path):
    data = encode(gradient((200, 150)), "JPEG")
    with pytest.raises(imaging.ImageError) as info:
        run(tmp_path, data[: len(data) // 2])
    assert info.value.reason == "undecodable"


@pytest.mark.parametrize(
    ("url", "body", "ext"),
    [
        ("http://h/a.jpg", b"\x89PNG\r\n\x1a\n" + bytes(16), "png"),  # the bytes win over the URL
        ("http://h/a.JPG?w=300", None, "jpg"),  # no bytes yet: a known suffix, query ignored
        ("http://h/a.php?id=1.png", None, "img"),  # the suffix of the path, not of the query
        ("http://h/a.jpg", b"<html>not an image</html>", "jpg"),  # unknown bytes: the URL's
    ],
)
def test_file_extension(url, body, ext):
    assert imaging.file_extension(url, body) == ext
