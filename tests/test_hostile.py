"""A hostile site: broken, lying, odd and slow images next to good ones, in one real crawl.

Every good image must be stored byte-exact; every bad one must fail with one WARNING line
(URL + reason), a stat ``imgcrawl/failed/<reason>`` and a manifest line; the crawl finishes.
"""

from __future__ import annotations

import hashlib
import html
import socket
import struct
import time
import zlib
from io import BytesIO

import pytest
from PIL import Image

from conftest import LocalSite, run_crawl

MAXSIZE = 300_000
STREAMED_TOTAL = 32 * 1024 * 1024  # what the server would send for the oversized stream


def picture(seed: int, size=(64, 40), mode="RGB") -> Image.Image:
    image = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    image.paste((255 - seed % 256, 20, 200), (0, 0, size[0] // 2, size[1] // 2))
    return image.convert(mode)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims huge dimensions: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + png_chunk(b"IEND", b""))


def jpeg_with_orientation(seed: int, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(picture(seed, (40, 20)), "JPEG", exif=exif)


def palette_png_with_transparent_corner() -> bytes:
    image = picture(13).quantize(4)  # exact colours, no dithering
    return encode(image, "PNG", transparency=image.getpixel((0, 0)))


def frames(seed: int) -> list[Image.Image]:
    return [picture(seed + i, (32, 24)) for i in range(3)]


GOOD = {f"/img/good{i}.jpg": encode(picture(i, (80 + i, 60)), "JPEG", quality=90) for i in range(4)}
UNICODE_PATH = "/img/caf%C3%A9%20%C3%A9t%C3%A9.jpg"  # how Scrapy sends "café été.jpg"
LONG_QUERY = "/img/long.jpg?" + "&".join(f"key{i}=value{i}" for i in range(300))

# path -> (content type, body, expected manifest status, expected reason)
KEPT: dict[str, tuple[str, bytes]] = {
    **{p: ("image/jpeg", b) for p, b in GOOD.items()},
    "/img/wrongtype.jpg": ("text/html", encode(picture(10), "PNG")),  # a PNG, served as HTML
    "/img/cmyk.jpg": ("image/jpeg", encode(picture(11, mode="CMYK"), "JPEG")),
    "/img/deep16.png": ("image/png", encode(Image.linear_gradient("L").resize((64, 32)).convert("I;16"), "PNG")),
    "/img/onebit.png": ("image/png", encode(picture(12, mode="1"), "PNG")),
    "/img/palette.png": ("image/png", palette_png_with_transparent_corner()),
    "/img/anim.gif": ("image/gif", encode(frames(20)[0], "GIF", save_all=True, append_images=frames(20)[1:])),
    "/img/anim.webp": ("image/webp", encode(frames(30)[0], "WEBP", save_all=True, append_images=frames(30)[1:])),
    "/img/anim.png": ("image/png", encode(frames(40)[0], "PNG", save_all=True, append_images=frames(40)[1:])),
    "/img/vector.svg": ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'),
    "/img/photo.avif": ("image/avif", encode(picture(14), "AVIF")),
    UNICODE_PATH: ("image/jpeg", encode(picture(15), "JPEG")),
    LONG_QUERY: ("image/jpeg", encode(picture(16), "JPEG")),
    **{f"/img/exif{n}.jpg": ("image/jpeg", jpeg_with_orientation(50 + n, n)) for n in range(2, 9)},
}
TRUNCATED_JPEG = encode(picture(60, (200, 150)), "JPEG")
TRUNCATED_PNG = encode(picture(61, (200, 150)), "PNG")
FAILED_FILES: dict[str, tuple[str, bytes, str]] = {
    "/img/truncated.jpg": ("image/jpeg", TRUNCATED_JPEG[: len(TRUNCATED_JPEG) // 2], "undecodable"),
    "/img/truncated.png": ("image/png", TRUNCATED_PNG[: len(TRUNCATED_PNG) // 2], "undecodable"),
    "/img/zero.jpg": ("image/jpeg", b"", "empty"),
    "/img/page.jpg": ("image/jpeg", b"<!doctype html><html><body>Not found</body></html>", "not-an-image"),
    "/img/api.png": ("image/png", b'{"error": "no such image"}', "not-an-image"),
    "/img/bomb.png": ("image/png", png_header_only(60_000, 60_000), "too-many-pixels"),
    "/img/big.png": ("image/png", png_header_only(2_000, 1_000), "too-many-pixels"),  # > IMGCRAWL_MAX_PIXELS
    "/private/secret.jpg": ("image/jpeg", GOOD["/img/good0.jpg"], "robots"),
}


def respond(h, status: int, body: bytes = b"", headers: dict | None = None, ctype="image/jpeg"):
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
        h.send_header(name, value)
    h.end_headers()
    h.wfile.write(body)


def hostile_site() -> tuple[LocalSite, dict]:
    seen = {"streamed": 0, "busy_times": []}
    files = {p: (ctype, body) for p, (ctype, body) in KEPT.items()}
    files.update({p: (ctype, body) for p, (ctype, body, _) in FAILED_FILES.items()})
    files["/robots.txt"] = ("text/plain", b"User-agent: *\nDisallow: /private/\n")
    good = GOOD["/img/good1.jpg"]
    site = LocalSite(files)

    def reset(h):  # half the body, then a TCP RST
        respond(h, 200, good[:500], {"Content-Length": str(len(good))})
        h.wfile.flush()
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
        h.close_connection = True

    def stall(h):  # headers and a few bytes, then nothing for longer than DOWNLOAD_TIMEOUT
        respond(h, 200, good[:100], {"Content-Length": str(len(good))})
        h.wfile.flush()
        time.sleep(3)
        h.close_connection = True

    def streamed(h):  # no Content-Length: only the byte count can stop it
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Connection", "close")
        h.end_headers()
        chunk = b"\xff" * 65536
        try:
            while seen["streamed"] < STREAMED_TOTAL:
                h.wfile.write(chunk)
                seen["streamed"] += len(chunk)
        except OSError:
            pass
        h.close_connection = True

    def declared_huge(h):
        respond(h, 200, good, {"Content-Length": str(10 * MAXSIZE)})
        h.close_connection = True

    def busy(h):  # 429 + Retry-After: 1 once, then the image
        seen["busy_times"].append(time.monotonic())
        if site.hits[h.path] == 1:
            respond(h, 429, b"slow down", {"Retry-After": "1"}, ctype="text/plain")
        else:
            respond(h, 200, GOOD["/img/good2.jpg"])

    def redirect(target):
        return lambda h: respond(h, 302 if "loop" in target else 301, b"", {"Location": target}, "text/plain")

    def lie_long(h):  # says twice the bytes it sends, then closes
        respond(h, 200, good, {"Content-Length": str(2 * len(good))})
        h.close_connection = True

    def lie_short(h):  # says half the bytes it sends
        respond(h, 200, TRUNCATED_PNG, {"Content-Length": str(len(TRUNCATED_PNG) // 2)}, "image/png")

    site.handlers.update({
        "/img/reset.jpg": reset,
        "/img/stall.jpg": stall,
        "/img/streamed.jpg": streamed,
        "/img/declared-huge.jpg": declared_huge,
        "/img/busy.jpg": busy,
        "/img/unavailable.jpg": lambda h: respond(h, 503, b"down", {"Retry-After": "3600"}, "text/plain"),
        "/img/error.jpg": lambda h: respond(h, 500, b"oops", ctype="text/plain"),
        "/img/chain.jpg": redirect("/img/chain2.jpg"),
        "/img/chain2.jpg": redirect("/img/chain3.jpg"),
        "/img/chain3.jpg": redirect("/img/good3.jpg"),
        "/img/loop.jpg": redirect("/img/loop2.jpg"),
        "/img/loop2.jpg": redirect("/img/loop.jpg"),
        "/img/lie-long.jpg": lie_long,
        "/img/lie-short.png": lie_short,
    })
    srcs = [p for p in [*KEPT, *FAILED_FILES, *site.handlers] if p not in ("/img/chain2.jpg", "/img/chain3.jpg", "/img/loop2.jpg")]
    unquoted = {UNICODE_PATH: "/img/café été.jpg"}
    body = "".join(f'<img src="{html.escape(unquoted.get(p, p))}" alt="x">' for p in srcs)
    more = '<a rel="next" href="/gallery/?page=2">next</a>'  # a page that always fails
    site.handlers["/gallery/?page=2"] = lambda h: respond(h, 500, b"oops", ctype="text/html")
    files["/gallery/"] = ("text/html; charset=utf-8", f"<html><body>{body}{more}</body></html>".encode())
    return site, seen


# What the failures above and the handlers must end as.
EXPECTED_FAILED = {
    **{p: reason for p, (_, _, reason) in FAILED_FILES.items()},
    "/img/reset.jpg": "data-loss",
    "/img/stall.jpg": "timeout",
    "/img/streamed.jpg": "too-large",
    "/img/declared-huge.jpg": "too-large",
    "/img/unavailable.jpg": "http-503",
    "/img/error.jpg": "http-500",
    "/img/loop.jpg": "too-many-redirects",
    "/img/lie-long.jpg": "data-loss",
    "/img/lie-short.png": "undecodable",
}


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    site, seen = hostile_site()
    site.start()
    tmp = tmp_path_factory.mktemp("hostile")
    try:
        result = run_crawl(tmp, "-a", f"url={site.url('/gallery/')}", settings={
            "DOWNLOAD_TIMEOUT": 2, "RETRY_TIMES": 1, "IMGCRAWL_RETRY_BACKOFF": 0.1,
            "IMGCRAWL_RETRY_AFTER_MAX": 5, "DOWNLOAD_MAXSIZE": MAXSIZE,
            "IMGCRAWL_MAX_PIXELS": 1_000_000, "IMGCRAWL_WORKER_POOL": "thread",
        })
    finally:
        site.stop()
    manifest = {line["url"]: line for line in result.manifest()}
    return site, seen, result, manifest


def test_crawl_finishes_without_errors_or_tracebacks(crawl):
    site, _, result, manifest = crawl
    assert result.returncode == 0, result.log[-3000:]
    assert "'finish_reason': 'finished'" in result.log
    assert "Traceback" not in result.log
    assert not [line for line in result.log.splitlines() if " ERROR: " in line]
    assert len(manifest) == len(KEPT) + len(EXPECTED_FAILED) + 2  # + busy, chain


def test_good_and_odd_images_are_kept_byte_exact(crawl):
    site, _, result, manifest = crawl
    kept = {**{p: body for p, (_, body) in KEPT.items()},
            "/img/busy.jpg": GOOD["/img/good2.jpg"], "/img/chain.jpg": GOOD["/img/good3.jpg"]}
    for path, body in kept.items():
        line = manifest[site.url(path)]
        assert line["status"] == "downloaded", (path, line)
        assert (result.store / line["path"]).read_bytes() == body, path
        assert line["sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(("path", "fmt", "suffix"), [
    ("/img/wrongtype.jpg", "PNG", ".png"), ("/img/cmyk.jpg", "JPEG", ".jpg"),
    ("/img/anim.gif", "GIF", ".gif"), ("/img/anim.webp", "WEBP", ".webp"),
    ("/img/anim.png", "PNG", ".png"), ("/img/photo.avif", "AVIF", ".avif"),
])
def test_format_comes_from_the_bytes(crawl, path, fmt, suffix):
    site, _, result, manifest = crawl
    line = manifest[site.url(path)]
    assert (line["format"], line["path"][-len(suffix):]) == (fmt, suffix)
    with Image.open(result.store / line["thumbs"]["small"]) as thumb:
        assert thumb.mode == "RGB" and thumb.size == (line["width"], line["height"])


def test_thumbnails_of_unusual_modes_look_right(crawl):
    site, _, result, manifest = crawl

    def thumb(path):
        return Image.open(result.store / manifest[site.url(path)]["thumbs"]["small"]).convert("RGB")

    # 16-bit grey is scaled, not clipped to white: the gradient's left edge stays dark.
    assert thumb("/img/deep16.png").getpixel((0, 16))[0] < 40
    # Palette index 0 is transparent: composited on white.
    assert min(thumb("/img/palette.png").getpixel((2, 2))) > 240
    assert thumb("/img/onebit.png").size == (64, 40)


def test_svg_is_kept_without_a_raster_thumbnail(crawl):
    site, _, _, manifest = crawl
    line = manifest[site.url("/img/vector.svg")]
    assert (line["format"], line["thumbs"], line["path"][-4:]) == ("SVG", {}, ".svg")


def test_exif_orientation_2_to_8(crawl):
    site, _, result, manifest = crawl
    for n in range(2, 9):
        line = manifest[site.url(f"/img/exif{n}.jpg")]
        expected = (20, 40) if n >= 5 else (40, 20)
        assert (line["width"], line["height"]) == expected, n
        with Image.open(result.store / line["thumbs"]["small"]) as thumb:
            assert thumb.size == expected, n


def test_each_bad_image_fails_once_with_its_reason(crawl):
    site, _, result, manifest = crawl
    warnings = [line for line in result.log.splitlines() if " WARNING: " in line]
    for path, reason in EXPECTED_FAILED.items():
        url = site.url(path)
        line = manifest[url]
        assert (line["status"], line["reason"]) == ("failed", reason), path
        mine = [w for w in warnings if url in w]
        assert len(mine) == 1 and f"({reason})" in mine[0], (path, mine)
        assert f"'imgcrawl/failed/{reason}'" in result.log
        assert not line.get("path")


def test_a_failing_page_is_one_warning_too(crawl):
    site, _, result, _ = crawl
    url = site.url("/gallery/?page=2")
    lines = [line for line in result.log.splitlines() if url in line and " WARNING: " in line]
    assert len(lines) == 1 and "Page failed (http-500)" in lines[0], lines
    assert site.hits["/gallery/?page=2"] == 2  # retried once, then given up


def test_oversized_stream_is_cut_while_streaming(crawl):
    _, seen, _, _ = crawl
    assert 0 < seen["streamed"] < STREAMED_TOTAL // 2


def test_retries_are_bounded_and_honour_retry_after(crawl):
    site, seen, _, _ = crawl
    assert site.hits["/img/busy.jpg"] == 2
    assert seen["busy_times"][1] - seen["busy_times"][0] >= 0.9  # waited as asked
    assert site.hits["/img/unavailable.jpg"] == 1  # asked for an hour: not retried
    assert site.hits["/img/error.jpg"] == 2  # RETRY_TIMES=1
    assert site.hits["/img/stall.jpg"] == 2
    assert site.hits["/img/reset.jpg"] == site.hits["/img/lie-long.jpg"] == 2
    assert site.hits["/img/loop.jpg"] + site.hits["/img/loop2.jpg"] == 6  # REDIRECT_MAX_TIMES=5
    assert site.hits["/private/secret.jpg"] == 0  # robots.txt obeyed


def test_retry_after_header_forms():
    from email.utils import formatdate

    from imgcrawl.retry import retry_after

    now = 1_800_000_000.0
    assert retry_after(b"7", now) == 7.0
    assert retry_after(formatdate(now + 30, usegmt=True).encode(), now) == 30.0
    assert retry_after(formatdate(now - 30, usegmt=True).encode(), now) == 0.0  # already past
    assert retry_after(b"soon", now) is None
    assert retry_after(None, now) is None
