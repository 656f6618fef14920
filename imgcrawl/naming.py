"""File names from a template: ``-s IMGCRAWL_FILE_NAME='{host}/{page_title}/{index:03}-{name}.{ext}'``.

Pure (standard library only). gallery-dl-style fields (:data:`FIELDS`) are filled from the
page, the image URL and the stored bytes' facts; the result names the original under
``full/`` and its thumbnails under ``thumbs/<size>/`` (same path, ``.jpg``).

Every value comes from the crawled site, so every part of the result is made safe for any
filesystem (:func:`safe_segment`): no ``/``, ``\\``, NUL or other control characters, none of
``<>:"|?*``, no ``.``/``..`` or hidden (dot) names, no Windows device names (``CON``,
``nul.txt``, ``COM1`` ...), no trailing dots or spaces, at most ``NAME_MAX`` bytes of UTF-8 a
name and ``MAX_DEPTH`` directories. The name always ends in the extension of the image's
real format. Two images whose names come out the same (ignoring case, as Windows and macOS
do) are told apart by :func:`candidates`: the later one gets ``~`` and the start of its
URL's SHA-1, so a URL keeps the same name on every crawl whatever order images arrive in.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

# The fields a template may use, each with the kind of value it is (a spec like {index:03}
# must suit it) and what it holds.
FIELDS: dict[str, tuple[type, str]] = {
    "host": (str, "the page's host (the image's when it has no page)"),
    "image_host": (str, "the image URL's host"),
    "page_path": (str, "the page URL's path; its slashes make directories"),
    "page_title": (str, "the page's <title>"),
    "album": (str, "the gallery/album: the last part of the page's path that is not /page/N"),
    "index": (int, "the image's place on its page, 1 first"),
    "name": (str, "the original file name from the image URL, without its extension"),
    "alt": (str, "the image's alt text (or title)"),
    "sha256": (str, "of the original bytes"),
    "width": (int, "in pixels, as displayed"),
    "height": (int, "in pixels, as displayed"),
    "ext": (str, "the extension of the real format (jpg, png ...)"),
    "date": (str, "YYYY-MM-DD: the image's Last-Modified date, else the day it was stored (UTC)"),
}
_SAMPLES = {str: "sample", int: 1}

NAME_MAX = 255  # bytes of one file or directory name (ext4, APFS, NTFS)
MAX_DEPTH = 8  # directories a name may make; deeper ones are folded into the last
MAX_VALUE_CHARS = 1000  # of one field value, before it is cut to fit a name
EMPTY = "_"  # stands for a value or a directory name that is empty once made safe
# Windows refuses these as names, with or without an extension, in any case.
RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{n}" for port in ("COM", "LPT") for n in [*"123456789", "\u00b9", "\u00b2", "\u00b3"]]
)
# Characters some filesystem refuses or gives a meaning: Windows' <>:"|?* and both slashes.
_UNSAFE = re.compile(r'[<>:"|?*\\/]')
_SPACES = re.compile(r"\s+")
_PAGINATION = re.compile(r"^(?:page|p)$", re.I)
_SUFFIXES = (8, 16, 40)  # hex digits of the URL's SHA-1 told-apart names get, in turn


class TemplateError(ValueError):
    """A template that cannot be used; the message says why in one line."""


def _placeholders(template: str):
    try:
        return [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise TemplateError(f"IMGCRAWL_FILE_NAME={template!r} is not a template: {exc}") from None


def check_template(template: str) -> str:
    """``template`` if it can name files; else :class:`TemplateError` saying why."""
    example = "e.g. -s IMGCRAWL_FILE_NAME='{host}/{page_title}/{index:03}-{name}.{ext}'"
    placeholders = _placeholders(template)
    if not placeholders:
        raise TemplateError(f"IMGCRAWL_FILE_NAME={template!r} uses no field, so every image would get one name; {example}")
    for name, spec, conversion in placeholders:
        if name not in FIELDS:
            raise TemplateError(
                f"IMGCRAWL_FILE_NAME: unknown field {{{name}}}; the fields are {', '.join(FIELDS)}; {example}"
            )
        if conversion or "{" in spec:
            raise TemplateError(f"IMGCRAWL_FILE_NAME: {{{name}}} takes a plain format spec (like {{index:03}}); {example}")
        kind = FIELDS[name][0]
        try:
            format(_SAMPLES[kind], spec)
        except (ValueError, TypeError):
            what = "a number" if kind is int else "text"
            raise TemplateError(f"IMGCRAWL_FILE_NAME: {{{name}:{spec}}} is not a format for {what}; {example}") from None
    return template


def _clean(value, keep_slashes: bool = False) -> str:
    """A field value with nothing a name may not hold; slashes kept only for a path."""
    text = unicodedata.normalize("NFC", str(value)[:MAX_VALUE_CHARS])
    # Control and format characters (NUL, newlines, bidi overrides that disguise an
    # extension, zero-width characters) go; runs of white space become one space.
    text = "".join(" " if c.isspace() else c for c in text if unicodedata.category(c) not in ("Cc", "Cf"))
    if keep_slashes:
        text = "/".join(_UNSAFE.sub("_", part) for part in text.split("/"))
    else:
        text = _UNSAFE.sub("_", text)
    return _SPACES.sub(" ", text).strip()


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8, cut at a character boundary."""
    return text.encode()[:limit].decode(errors="ignore")


def safe_segment(segment: str, limit: int = NAME_MAX) -> str:
    """One directory or file name any filesystem takes, of at most ``limit`` bytes."""
    segment = _cut(segment.strip(), limit).rstrip(". ")  # Windows drops trailing dots and spaces
    if segment.startswith("."):
        segment = "_" + segment[1:]  # no hidden names, no "..": the store's own are hidden
    if not segment:
        return EMPTY
    stem = segment.split(".", 1)[0].rstrip(" ")
    if stem.upper() in RESERVED:
        segment = _cut(stem + "_" + segment[len(stem):], limit)
    return segment


def render(template: str, fields: dict) -> str:
    """The relative path (under ``full/``) ``template`` gives for ``fields``; safe as a whole
    and in every part, ending in ``.<ext>``."""
    values = {}
    for name, (kind, _) in FIELDS.items():
        value = fields.get(name)
        if kind is int:
            values[name] = value if isinstance(value, int) else 0
        else:
            values[name] = _clean(value if value is not None else "", keep_slashes=name == "page_path") or EMPTY
    ext = _clean(values["ext"]).lower()
    # The template's own text is made safe too: only its slashes (and page_path's) divide.
    parts = [_clean(part) for part in template.format_map(values).split("/")]
    directories = [safe_segment(part) for part in parts[:-1] if part]
    if len(directories) > MAX_DEPTH:
        directories = directories[: MAX_DEPTH - 1] + [safe_segment("_".join(directories[MAX_DEPTH - 1:]))]
    name = parts[-1]
    if not name.lower().endswith(f".{ext}"):
        name = f"{name}.{ext}"  # the real format's extension, whatever the template says
    # Room in NAME_MAX for the extension and the suffix that tells names apart (candidates).
    stem = safe_segment(name[: -len(ext) - 1], NAME_MAX - len(ext) - 2 - max(_SUFFIXES))
    return "/".join([*directories, f"{stem}.{ext}"])


def candidates(path: str, url: str) -> list[str]:
    """``path``, then the names that tell it apart for ``url`` (``stem~<SHA-1 of url>``)."""
    stem, dot, ext = path.rpartition(".")
    digest = hashlib.sha1(url.encode()).hexdigest()  # noqa: S324 - a name, not security
    return [path, *(f"{stem}~{digest[:n]}{dot}{ext}" for n in _SUFFIXES)]


def claim_key(path: str) -> str:
    """What two names must not share: the path without its extension (the thumbnails
    drop it), ignoring case and Unicode form."""
    return unicodedata.normalize("NFC", path.rpartition(".")[0]).casefold()


def thumb_path(path: str, thumb_id: str) -> str:
    """The thumbnail's path for the original ``full/<path>``."""
    return f"thumbs/{thumb_id}/{path.rpartition('.')[0]}.jpg"


def album(page_path: str) -> str:
    """The last part of a page's path that is not pagination (``/page/3``) or a file
    extension: ``/albums/summer/page/3`` -> ``summer``."""
    parts = [unquote(p) for p in page_path.split("/") if p]
    if len(parts) >= 2 and parts[-1].isdigit() and _PAGINATION.match(parts[-2]):
        parts = parts[:-2]
    return PurePosixPath(parts[-1]).stem if parts else ""


def http_date(value: str | None) -> str | None:
    """``YYYY-MM-DD`` (UTC) of an HTTP date, None if it is not one."""
    try:
        when = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).date().isoformat()


def page_fields(image_url: str, page_url: str | None, page_title: str | None, position: int | None,
                alt: str | None, last_modified: str | None) -> dict:
    """The fields known before the bytes are decoded (the rest come from the image's facts)."""
    image, page = urlsplit(image_url), urlsplit(page_url or "")
    file_name = unquote(PurePosixPath(image.path).name)
    return {
        "host": page.hostname or image.hostname,
        "image_host": image.hostname,
        "page_path": unquote(page.path),
        "page_title": page_title,
        "album": album(page.path),
        "index": position + 1 if isinstance(position, int) else 0,
        "name": PurePosixPath(file_name).stem or "image",
        "alt": alt,
        "date": http_date(last_modified) or datetime.now(timezone.utc).date().isoformat(),
    }
