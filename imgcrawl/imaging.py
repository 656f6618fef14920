"""Bytes in, image facts and thumbnails out.

Pure and thread-safe: no Scrapy imports, no shared state but Pillow's own pixel limit (only
ever raised, see :func:`open_image`), so the pipeline can run it in worker threads or
processes. The original bytes are never re-encoded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, UnidentifiedImageError

from imgcrawl import phash
from imgcrawl.failures import Failed

# Pillow format name -> file extension for the stored original.
FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
    "ICO": "ico",
    "AVIF": "avif",
    "HEIF": "heic",
    "JPEG2000": "jp2",
    "SVG": "svg",
}

# (offset, magic) -> format; enough to name the formats above from the first bytes.
_MAGIC = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (8, b"WEBP", "WEBP"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypavis", "AVIF"),
    (4, b"ftypheic", "HEIF"),
    (4, b"ftypheix", "HEIF"),
    (4, b"ftypmif1", "HEIF"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
)

THUMB_BACKGROUND = (255, 255, 255)
THUMB_QUALITY = 85
DEFAULT_MAX_PIXELS = 100_000_000


class ImageError(Failed):
    """An image we will not store; ``reason`` is a short stat-friendly slug."""


@dataclass
class ImageFacts:
    format: str
    width: int
    height: int
    bytes: int
    sha256: str
    frames: int = 1
    thumbs: dict[str, list[int]] = field(default_factory=dict)
    phash: str | None = None  # hex; None for SVG (no raster)

    def as_dict(self) -> dict:
        return asdict(self)


def sniff_format(head: bytes) -> str | None:
    """Name the image format from the first bytes, or None if it is not an image we know."""
    for offset, magic, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    text = head[:512].lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG"
    return None


def extension_for(fmt: str) -> str:
    return FORMAT_EXTENSIONS.get(fmt, fmt.lower())


# Every extension file_extension can give: by format, or "img" for bytes it cannot name.
STORED_EXTENSIONS = (*dict.fromkeys(FORMAT_EXTENSIONS.values()), "img")


def with_each_extension(path: str) -> list[str]:
    """``path``, then the same path under each other extension :func:`file_extension` can
    give (an original whose format was unknown when its name was first made)."""
    stem, dot, ext = path.rpartition(".")
    if not dot or ext not in STORED_EXTENSIONS:
        return [path]
    return [path, *(f"{stem}.{other}" for other in STORED_EXTENSIONS if other != ext)]


def file_extension(url: str, body: bytes | None = None) -> str:
    """The extension to store an image under: from its bytes when we have them, else from
    the URL's path when it names a known format, else ``img``."""
    fmt = sniff_format(body[:512]) if body is not None else None
    if fmt:
        return extension_for(fmt)
    suffix = PurePosixPath(url.split("?", 1)[0]).suffix.lower().lstrip(".")
    return suffix if suffix in FORMAT_EXTENSIONS.values() else "img"


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open (header only) and refuse images too large to decode, before any pixel is read."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        # Pillow's own bomb check (process-wide; it refuses over twice this) would refuse
        # images our limit allows. Only ever raised, to the largest limit this process was
        # given: Pillow still checks every frame it opens, and the check below is ours.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = Image.open(BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("too-many-pixels", str(exc)) from None
    except UnidentifiedImageError:
        raise ImageError("not-an-image", "Pillow cannot identify it") from None
    except Exception as exc:  # noqa: BLE001 - any header parse error means undecodable
        raise ImageError("undecodable", str(exc)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError("too-many-pixels", f"{width}x{height} > {max_pixels} pixels")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for a JPEG thumbnail: transparency composited on white, wide modes scaled down."""
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        # Pillow runs point() on "I;16" (native little-endian) only; the big-endian TIFF's
        # "I;16B" (and "I;16L"/"I;16N") go through "I" first, a lossless widening.
        if image.mode != "I;16":
            image = image.convert("I")
        image = image.point(lambda v: v / 256).convert("L")
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, THUMB_BACKGROUND + (255,))
        return Image.alpha_composite(background, image).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def thumbnail_box(size: tuple[int, int], transposed: bool) -> tuple[int, int]:
    """The box to fit the stored pixels into, so that after EXIF rotation it fits ``size``."""
    return (size[1], size[0]) if transposed else size


def fitted_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled down to fit ``box``, aspect kept, never enlarged (as ``thumbnail()``)."""
    width, height = size
    scale = min(box[0] / width, box[1] / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _orientation(image: Image.Image) -> int:
    return image.getexif().get(0x0112, 1)


def _needs_swap(image: Image.Image) -> bool:
    # EXIF orientations 5-8 rotate by 90 degrees: width and height trade places.
    return _orientation(image) in (5, 6, 7, 8)


def make_thumbnails(
    image: Image.Image, sizes: dict[str, tuple[int, int]]
) -> dict[str, Image.Image]:
    """One decode, every size: aspect kept, never enlarged, EXIF orientation applied."""
    if not sizes:
        return {}
    swap = _needs_swap(image)
    biggest = max(sizes.values(), key=lambda s: s[0] * s[1])
    if image.format == "JPEG":
        # Decode at the smallest DCT scale that still covers the thumbnail itself (not its
        # box: a 4:3 photo in a square box needs only 256x192, often 1/8 scale instead of
        # 1/4): libjpeg's scaled IDCT filters properly and the resize after it is small.
        image.draft("RGB", fitted_size(image.size, thumbnail_box(biggest, swap)))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to rotate
    # RGBA/LA are resized first (Pillow resizes them premultiplied, so hidden colours do not
    # bleed) and put on white at thumbnail size, where compositing costs far less.
    base = image if image.mode in ("RGB", "RGBA", "L", "LA") else to_rgb(image)
    thumbs = {}
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1][0] * kv[1][1]):
        thumb = base.copy() if len(sizes) > 1 else base  # the common single size needs no copy
        # BICUBIC (thumbnail()'s own default) from under 2x the size: cheaper than LANCZOS,
        # for a slightly softer thumbnail.
        thumb.thumbnail(size, Image.Resampling.BICUBIC)
        thumbs[name] = to_rgb(thumb)
    return thumbs


# An image with no thumbnail made from it is hashed from a copy this small (a JPEG decoded
# at a DCT scale near it): the hash looks at 32x32 grey pixels.
HASH_SOURCE = (64, 64)

# A JPEG this small that already fits the box is its own thumbnail (see is_own_thumbnail).
OWN_THUMBNAIL_MAX_BYTES = 64 * 1024


def is_own_thumbnail(image: Image.Image, size: int, boxes: list[tuple[int, int]]) -> bool:
    """A small RGB/grey JPEG that fits every box upright: re-encoding it would only cost a
    decode and an encode and lose quality, so its own bytes are the thumbnail."""
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and size <= OWN_THUMBNAIL_MAX_BYTES
        and all(image.width <= w and image.height <= h for w, h in boxes)
        and _orientation(image) == 1
    )


def encode_jpeg(image: Image.Image, quality: int = THUMB_QUALITY) -> bytes:
    buf = BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temp file and rename, so a killed write never leaves a half file.

    Plain ``os`` calls (no ``tempfile``, no ``mkdir`` unless the directory is missing): this
    runs twice per image. The random temp name is unique across processes and machines
    sharing a store.
    """
    directory, name = os.path.split(os.fspath(path))
    # Short (a name near NAME_MAX must still get a temp name), with the file's extension.
    tmp = os.path.join(directory, f".tmp-{os.urandom(6).hex()}{os.path.splitext(name)[1][:16]}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(directory or ".", exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    try:
        with memoryview(data) as view:
            while view:
                view = view[os.write(fd, view):]
        os.close(fd)
        fd = -1
        os.replace(tmp, os.fspath(path))
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


def displayed_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if _needs_swap(image) else (width, height)


class FileSystem:
    """Where :func:`process_image` writes and :func:`rethumb` reads by default: local files,
    at absolute paths. Another store (:class:`imgcrawl.s3.S3Objects`) offers the same two
    methods for its own locations."""

    @staticmethod
    def write_all(writes: list[tuple[str, bytes, str, dict | None]]) -> None:
        """Each ``(path, data, format, facts)``: ``data`` to ``path``, whole or not at all."""
        for path, data, _, _ in writes:
            atomic_write(path, data)

    @staticmethod
    def read(path: str) -> bytes:
        return Path(path).read_bytes()


def process_image(
    data: bytes,
    original_path: str | None,
    thumbs: dict[str, tuple[tuple[int, int], str]],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: tuple[int, int] = (0, 0),
    store=FileSystem,
) -> dict:
    """Validate ``data``, write it unchanged to ``original_path`` (with its facts, which a
    bucket keeps as the object's metadata) and each thumbnail ``{name: ((w, h), path)}`` as
    JPEG, into ``store``. Returns :class:`ImageFacts` as a dict.

    Raises :class:`ImageError` for anything that is not a decodable image, or one smaller
    than ``min_size`` (``IMAGES_MIN_WIDTH``/``_HEIGHT``, as displayed: after EXIF rotation);
    nothing is written then. This is the unit of work the pipeline hands to its worker pool.
    """
    if not data:
        raise ImageError("empty", "zero bytes")
    fmt = sniff_format(data[:512])
    if fmt == "SVG":
        # Vector: kept as is, at any minimum size (it has none in pixels); no raster
        # thumbnail without an SVG renderer.
        facts = ImageFacts("SVG", 0, 0, len(data), hashlib.sha256(data).hexdigest()).as_dict()
        if original_path:
            store.write_all([(original_path, data, "SVG", facts)])
        return facts
    image = open_image(data, max_pixels)
    fmt = image.format or fmt or "unknown"
    try:
        # Reading EXIF or counting frames may already hit a truncated stream.
        width, height = displayed_size(image)
        if width < min_size[0] or height < min_size[1]:
            raise ImageError("too-small", f"{width}x{height} is under IMAGES_MIN_WIDTH x IMAGES_MIN_HEIGHT "
                                          f"{min_size[0]}x{min_size[1]}")
        facts = ImageFacts(
            format=fmt,
            width=width,
            height=height,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            frames=getattr(image, "n_frames", 1),
        )
        boxes = [size for size, _ in thumbs.values()]
        if thumbs and not is_own_thumbnail(image, len(data), boxes):
            made = make_thumbnails(image, {name: size for name, (size, _) in thumbs.items()})
            encoded = {name: (encode_jpeg(thumb), thumb.size) for name, thumb in made.items()}
            # The perceptual hash from the biggest thumbnail: no second decode.
            hashed = max(made.values(), key=lambda thumb: thumb.width * thumb.height)
        else:
            # Still decode (cheaply, small) to prove the file is a whole image before keeping
            # it; that small copy is what gets hashed.
            hashed = make_thumbnails(image, {"hash": HASH_SOURCE})["hash"]
            encoded = {name: (data, (width, height)) for name in thumbs}
        facts.phash = phash.to_hex(phash.phash(hashed))
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt streams raise many types
        raise ImageError("undecodable", str(exc) or type(exc).__name__) from None
    writes = []
    for name, (blob, size) in encoded.items():
        writes.append((thumbs[name][1], blob, "JPEG", None))
        facts.thumbs[name] = list(size)
    facts = facts.as_dict()
    if original_path:
        writes.append((original_path, data, fmt, facts))
    store.write_all(writes)
    return facts


def rethumb(
    original_path: str,
    thumbs: dict[str, tuple[tuple[int, int], str]],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    store=FileSystem,
) -> dict:
    """New thumbnails from an already stored original (after ``IMAGES_THUMBS`` changed, or
    for an original found without its record). Not judged by ``min_size``: it is stored."""
    return process_image(store.read(original_path), None, thumbs, max_pixels, store=store)
