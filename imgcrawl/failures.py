"""Why an image or a page was given up on: one reason slug, one WARNING line, one stat.

Every failure the crawl reports is counted as ``imgcrawl/failed/<reason>`` and logged once,
at WARNING, with its URL, referrer and a one-line detail. :class:`Failed` is the one
exception that carries a ``(reason, detail)`` pair; the pipeline, the guard and the image
workers raise it (or a subclass that also is the Scrapy exception Scrapy expects there).

Standard library only at import time: the image worker processes import this module
through :mod:`imgcrawl.imaging` and must not load Scrapy.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)


def forget_frames(failure: Failure) -> Failure:
    """``failure`` without the frames it keeps: its traceback, and those of its exception
    and of the exceptions that one was raised while handling. The frames hold the call's
    arguments and locals (an image body), in reference cycles that only a full garbage
    collection frees. Returns ``failure``, so it serves as an errback."""
    failure.cleanFailure()
    exc, seen = failure.value, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__context__
    return failure


class Failed(Exception):
    """Something given up on; ``reason`` is the stat key suffix, ``detail`` the one line."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # pickled back from worker processes with reason and detail intact
        return type(self), (self.reason, self.detail)


# Failures of the store itself, not of one image: the crawl stops with one line and the fix.
STORE_FAILURES = {
    "disk-full": (
        "IMAGES_STORE {root} is full ({detail}): free some space there or point the crawl "
        "at a bigger disk with -s IMAGES_STORE=/path/to/dir"
    ),
    "store-not-writable": (
        "cannot write to IMAGES_STORE {root} ({detail}): give this user write permission "
        "there (chown/chmod) or choose another directory with -s IMAGES_STORE=/path/to/dir"
    ),
    # An S3 endpoint that does not answer (imgcrawl.s3 words its own lines for a bucket).
    "store-unreachable": "cannot reach IMAGES_STORE {root} ({detail})",
}
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_DISK_FULL_SQLITE = frozenset({sqlite3.SQLITE_FULL})
_NOT_WRITABLE_SQLITE = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN})


def store_failure(exc: BaseException) -> str | None:
    """``disk-full`` / ``store-not-writable`` when ``exc`` says so (its errno, or SQLite's
    primary result code), else None."""
    if isinstance(exc, sqlite3.Error):
        code = (exc.sqlite_errorcode or 0) & 0xFF  # extended codes keep the primary in the low byte
        if code in _DISK_FULL_SQLITE:
            return "disk-full"
        if code in _NOT_WRITABLE_SQLITE:
            return "store-not-writable"
        return None
    code = getattr(exc, "errno", None)
    if code in _DISK_FULL_ERRNOS:
        return "disk-full"
    if code in _NOT_WRITABLE_ERRNOS:
        return "store-not-writable"
    return None


class StoreFailures:
    """A store that cannot take more files: one ERROR line with the fix, the first time;
    later failures are only counted. One per crawl (:meth:`of`): the pipeline and the
    manifest kept in the store share it, so whichever meets the full disk first says it."""

    _of_crawler: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, root):
        self.root = root
        self.failed = False

    @classmethod
    def of(cls, crawler, root) -> StoreFailures:
        """The crawl's instance (made with ``root`` the first time)."""
        if crawler not in cls._of_crawler:
            cls._of_crawler[crawler] = cls(root)
        return cls._of_crawler[crawler]

    def report(self, reason: str, exc: BaseException, message: str | None = None) -> bool:
        """Log the line (``message``, or the exception's own, or the reason's) unless it was
        logged already; True the first time."""
        if self.failed:
            return False
        self.failed = True
        detail = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        message = message or getattr(exc, "message", None) or STORE_FAILURES[reason].format(root=self.root, detail=detail)
        logger.error("imgcrawl: %s", message)
        return True


def failure_reason(exc: BaseException) -> str:
    """A short, stable slug for why a download failed (used in stats and logs)."""
    # Imported here, not at the top: the image workers import this module and stay Scrapy-free.
    from scrapy import exceptions  # noqa: PLC0415
    from scrapy.spidermiddlewares.httperror import HttpError  # noqa: PLC0415

    if isinstance(exc, Failed):
        return exc.reason
    if isinstance(exc, (OSError, sqlite3.Error)) and (store_reason := store_failure(exc)):
        return store_reason
    if isinstance(exc, HttpError):
        return f"http-{exc.response.status}"
    if isinstance(exc, exceptions.IgnoreRequest):
        from imgcrawl import compat  # noqa: PLC0415 - see above

        if isinstance(exc.__cause__, compat.DecompressionMaxSizeExceeded):
            return "too-large"  # from Scrapy's own HttpCompressionMiddleware
        message = str(exc).lower()
        if "robots" in message:
            return "robots"
        return "too-many-redirects" if "redirections" in message else "filtered"
    for cls, reason in (
        (exceptions.DownloadTimeoutError, "timeout"),
        (exceptions.DownloadCancelledError, "too-large"),
        (exceptions.CannotResolveHostError, "dns"),
        (exceptions.DownloadConnectionRefusedError, "connection-refused"),
        (exceptions.ResponseDataLossError, "data-loss"),
        (exceptions.DownloadFailedError, "connection-lost"),
    ):
        if isinstance(exc, cls):
            return reason
    return type(exc).__name__.lower()


def report_failure(crawler, what: str, request, exc: BaseException) -> str:
    """The one WARNING line (what, reason, URL, referrer, detail) and the stat; the reason."""
    from scrapy.utils.request import referer_str  # noqa: PLC0415 - see failure_reason

    reason = failure_reason(exc)
    crawler.stats.inc_value(f"imgcrawl/failed/{reason}")
    if reason != "quota":  # said once when the quota was reached; the rest are only counted
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        logger.warning(
            "%s failed (%s): %s referred in <%s>: %s",
            what, reason, request.url, referer_str(request), detail.splitlines()[0][:300],
        )
    return reason
