"""Conditional re-crawls: what a server said an image's bytes are, asking "changed since?"
with it, and what a 304 Not Modified must look like. Pure (no Scrapy, no reactor).

A stored image due again (``IMAGES_EXPIRES``) whose server sent an ``ETag`` or a
``Last-Modified`` is requested with ``If-None-Match`` / ``If-Modified-Since``: a 304 costs a
response head instead of the whole image. Only what a server sends within bounds is kept:
a validator of at most :data:`MAX_VALIDATOR_BYTES` printable characters, a date that is an
HTTP date.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from imgcrawl.failures import Failed

MAX_VALIDATOR_BYTES = 1024  # an ETag is a hash or a version: a few dozen bytes
# Request header -> the record's field it sends back.
CONDITIONS = {"If-None-Match": "etag", "If-Modified-Since": "last_modified"}


def _printable(value: bytes | None) -> str | None:
    if not value or len(value) > MAX_VALIDATOR_BYTES:
        return None
    text = value.decode("latin-1").strip()
    return text if text and all(" " <= c <= "~" or c >= "\x80" for c in text) else None


def _is_http_date(text: str) -> bool:
    try:
        return parsedate_to_datetime(text) is not None
    except (TypeError, ValueError, IndexError):
        return False


def validators(headers) -> dict[str, str]:
    """``{"etag", "last_modified"}`` from response headers (Scrapy's ``Headers`` or a dict of
    bytes), leaving out what is missing, oversized or malformed."""
    found = {}
    etag = _printable(headers.get(b"ETag"))
    if etag:
        found["etag"] = etag
    last_modified = _printable(headers.get(b"Last-Modified"))
    if last_modified and _is_http_date(last_modified):
        found["last_modified"] = last_modified
    return found


def request_headers(record: dict) -> dict[str, str]:
    """The conditions to send for a stored image, from its record's validators."""
    return {header: record[field] for header, field in CONDITIONS.items() if record.get(field)}


def is_conditional(headers) -> bool:
    """Did the request ask "changed since?" (Scrapy's request ``Headers``)?"""
    return any(headers.get(header) for header in CONDITIONS)


def check_not_modified(conditional: bool, body: bytes) -> None:
    """A 304 is "unchanged" only as the answer to a conditional request, and has no body:
    anything else is a server we cannot trust about this image (reason ``bad-304``)."""
    if not conditional:
        raise Failed("bad-304", "304 Not Modified to a request that was not conditional (nothing stored to keep)")
    if body:
        raise Failed("bad-304", f"304 Not Modified with a {len(body)}-byte body")
