"""The manifest: one JSON line per image (``FEEDS``), or CSV with ``-o images.csv``.

* The per-image manifest (one line per image URL, merged at each crawl's end) is
  :mod:`imgcrawl.merge`'s; this module writes it as a Scrapy feed.
* :func:`manifest_uri_params` (``FEED_URI_PARAMS``) lets a feed URI say
  ``%(images_store)s/manifest.jsonl``, so the manifest sits with the images.
* :class:`RepairManifest` (an extension) cuts a half-written last line left by a killed
  crawl before the feed exporter appends to a feed that is appended to.
* :class:`ManifestCsvItemExporter` (``FEED_EXPORTERS["csv"]``) writes ``thumbs`` as JSON and
  quotes cells a spreadsheet would run as a formula.
* :class:`ManifestFileStorage` (``FEED_STORAGES`` for local paths) writes each line to disk
  whole or not at all, and turns a full disk or a read-only file into one line and the
  crawl's close reason instead of a traceback per item. A feed with the option
  ``"imgcrawl_per_image": True`` (the default manifest) is written as a
  :class:`LocalManifest`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

from scrapy.exporters import CsvItemExporter
from scrapy.extensions.feedexport import FileFeedStorage
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.threads import deferToThread

from imgcrawl.failures import STORE_FAILURES, StoreFailures, store_failure
from imgcrawl.merge import O_CLOEXEC, LocalManifest, MergeReport, cut_half_line

logger = logging.getLogger(__name__)

# The FEEDS option that makes a feed the per-image manifest (merged, one line per image URL)
# instead of a file each crawl appends to.
PER_IMAGE = "imgcrawl_per_image"


def is_per_image(feed_options: dict | None) -> bool:
    return bool((feed_options or {}).get(PER_IMAGE))


def fill_feed_uri(uri: str, images_store, name: str | None = None) -> str | None:
    """A FEEDS key with ``%(images_store)s`` (and ``%(name)s`` if given) filled in; None
    when it needs parameters only known during the crawl (``%(time)s`` ...)."""
    params = {"images_store": images_store, **({"name": name} if name else {})}
    try:
        return str(uri) % params
    except (KeyError, ValueError, TypeError):
        return None


def manifest_uri_params(params: dict, spider) -> dict:
    return {**params, "images_store": spider.settings.get("IMAGES_STORE")}


def local_jsonl_feeds(settings) -> list[Path]:
    """The local JSON-lines feeds each crawl appends to whose paths are known before the
    crawl (a per-image manifest is never appended to: its journals are cut as merged)."""
    paths = []
    for uri, options in settings.getdict("FEEDS").items():
        if (options or {}).get("format") not in ("jsonlines", "jl") or is_per_image(options):
            continue
        uri = fill_feed_uri(uri, settings.get("IMAGES_STORE"))
        if uri is None:
            continue  # depends on %(time)s etc.: a new file each crawl
        if "://" not in uri or uri.startswith("file://"):
            paths.append(Path(uri.removeprefix("file://")))
    return paths


def repair_jsonl(path: Path) -> bool:
    """Cut a half-written last line (a crawl killed mid-write), so that the lines a resumed
    crawl appends stay one JSON object each. True if something was cut."""
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDWR | O_CLOEXEC)
    try:
        return cut_half_line(fd)
    finally:
        os.close(fd)


class RepairManifest:
    """Built with the crawler, before the feed exporter opens its files at spider open."""

    @classmethod
    def from_crawler(cls, crawler):
        for feed in local_jsonl_feeds(crawler.settings):
            try:
                cut = repair_jsonl(feed)
            except OSError as exc:
                # Built before the crawl starts: an exception here would end it with a
                # CRITICAL traceback and no finish reason. A store we cannot write to (or a
                # full one) is reported once, with the fix, by whatever writes to it first
                # (the pipeline's open_spider, or the manifest itself): nothing more to say.
                if store_failure(exc) is None:
                    logger.warning("Could not check %s for a half-written last line: %s", feed, exc)
                else:
                    logger.debug("Manifest %s left as it is: %s", feed, exc)
                continue
            if cut:
                logger.warning("Cut a half-written last line from %s (an earlier crawl was killed)", feed)
        return cls()


# A spreadsheet reads a cell starting with one of these as a formula (or, for tab and CR,
# may strip them and then read one): alt texts, titles and URLs come from the crawled site.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str) -> str:
    """OWASP's CSV-injection defence: a cell that would start a formula gets a leading
    single quote, which spreadsheets read as "this is text" and do not show."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


class ManifestCsvItemExporter(CsvItemExporter):
    """Scrapy's CSV exporter, for people opening the file in a spreadsheet: ``thumbs`` as JSON
    (not a Python repr) and every text cell safe from formula injection. The JSON-lines
    manifest keeps the values exactly as found."""

    def serialize_field(self, field, name, value):
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        value = super().serialize_field(field, name, value)
        return spreadsheet_safe(value) if isinstance(value, str) else value


# -- the manifest file --------------------------------------------------------------------

# After "cannot write the manifest <path> (<OS error>): ". Images stored meanwhile are in
# the index either way, and the next crawl writes their lines (status "uptodate").
MANIFEST_FAILURES = {
    "disk-full": "its disk is full: free some space there or point FEEDS at a bigger disk",
    "store-not-writable": "give this user write permission there (chown/chmod) or point FEEDS elsewhere",
    "manifest-failed": "point FEEDS elsewhere",
}
LOST_STAT = "imgcrawl/manifest/lines_lost"


def cut_torn_tail(fd: int, torn: bytes) -> None:
    """Take back the start of a line a full disk cut short, if it is still the file's end
    (another crawl appending to the same manifest may have written since: then leave it to
    :func:`repair_jsonl`'s next run rather than cut that crawl's line)."""
    try:
        size = os.fstat(fd).st_size
        if size >= len(torn) and os.pread(fd, len(torn), size - len(torn)) == torn:
            os.ftruncate(fd, size - len(torn))
    except OSError:
        pass


class ManifestFile(io.RawIOBase):
    """The open manifest, as Scrapy's exporters write it: one ``write()`` per line (CSV: per
    row). Each goes to disk at once, whole or not at all.

    At once, unbuffered: a line is on disk as soon as its image is stored, so a full disk
    or a killed crawl costs only the lines of images still in flight (Python's write buffer
    held the lines of the last several images, and once the disk was full none of them
    could be written at all). Whole: a line cut short by a full disk is taken back, so no
    later line can follow half a line. ``on_error(exc, lines_lost)`` hears of each failure;
    the exporter never sees an exception, which Scrapy would log as an ERROR with a
    traceback for every item.
    """

    def __init__(self, fd: int | None, on_error):
        super().__init__()
        self.fd = fd  # None: the file could not be opened; every line is lost
        self.on_error = on_error

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        size = len(data)
        if self.fd is None:
            self.on_error(None, 1)
            return size
        with memoryview(data) as view:
            written = 0
            try:
                while written < size:
                    written += os.write(self.fd, view[written:])
            except OSError as exc:
                if written:
                    cut_torn_tail(self.fd, bytes(view[:written]))
                self.on_error(exc, 1)
        return size  # written or counted as lost: the exporter has nothing to retry

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.close(fd)
            except OSError as exc:  # NFS and the like report a failed write at close
                self.on_error(exc, 0)
        super().close()


class ManifestFileStorage(FileFeedStorage):
    """Scrapy's local-file feed storage (``FEED_STORAGES`` ``""`` and ``"file"``), writing
    through :class:`ManifestFile`.

    A feed with ``"imgcrawl_per_image": True`` is a :class:`LocalManifest`: the crawl's lines
    go to its journal, and :meth:`store` (the feed's end) merges it into the manifest on a
    thread; :meth:`read_merged` then reads the merged manifest (the contact sheet does).

    The first line that cannot be written (disk full, read-only, no permission) is said once
    and closes the crawl, as the pipeline does when it cannot store an image: ``disk_full``,
    ``store_not_writable`` (else ``manifest_failed``). When the manifest is in
    ``IMAGES_STORE``, a full or read-only disk is the store's failure: one line for the
    crawl, shared with the pipeline. The images already stored stay in the index, so the next
    crawl writes their lines (status ``uptodate``). A merge that fails leaves the journal
    pending, for the next crawl's merge.
    """

    def __init__(self, uri: str, *, feed_options: dict | None = None, crawler=None):
        super().__init__(uri, feed_options=feed_options)
        self.crawler = crawler
        self.failure: str | None = None
        self.manifest = LocalManifest(self.path) if is_per_image(feed_options) else None
        self.journal: Path | None = None
        self.merged = False

    @classmethod
    def from_crawler(cls, crawler, uri: str, *, feed_options: dict | None = None):
        return cls(uri, feed_options=feed_options, crawler=crawler)

    def open(self, spider) -> ManifestFile:
        overwrite = self.write_mode == "wb"
        flags = os.O_RDWR | os.O_CREAT | O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_APPEND)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if self.manifest is None:
                fd = os.open(self.path, flags, 0o666)
            else:
                fd, self.journal = self.manifest.open_journal()
        except OSError as exc:
            self.failed(exc, 0)
            fd = None
        return ManifestFile(fd, self.failed)

    def store(self, file):
        file.close()
        if self.manifest is None or self.journal is None:
            return None
        d = deferToThread(self.manifest.merge, self.write_mode == "wb")
        return d.addCallbacks(self._merged, self._not_merged)

    def read_merged(self, use: Callable[[Iterable[bytes]], object]) -> object:
        """``use(lines)`` over the merged manifest (see :meth:`LocalManifest.read_merged`);
        blocking: call it on a thread, once :attr:`merged`."""
        return self.manifest.read_merged(use)

    def _merged(self, report: MergeReport) -> None:
        self.merged = True
        for path in report.cut:
            logger.warning("Cut a half-written last line from %s (its crawl was killed)",
                           self.manifest.history / path.name)
        for path, count in report.bad_lines.items():
            logger.warning("Left %d lines of %s out of the manifest: not JSON objects with a url", count, path)
        crawls = len(report.journals)
        logger.info("Manifest: %d images in %s (merged the lines of %d crawl%s; each crawl's lines are kept in %s)",
                    report.images, self.path, crawls, "" if crawls == 1 else "s", self.manifest.history)

    def _not_merged(self, failure):
        if not failure.check(OSError, sqlite3.Error):
            return failure
        kept = f"this crawl's lines are kept in {self.journal} and the next crawl merges them"
        if self.failure is not None:  # the failure was said when a line could not be written
            logger.info("Manifest %s not updated (%s); %s", self.path, self.failure, kept)
        else:
            self.failed(failure.value, 0, kept)
        return None

    def failed(self, exc: OSError | sqlite3.Error | None, lines_lost: int, kept: str = "") -> None:
        """Lines not written are counted; the first failure is said and closes the crawl."""
        if lines_lost and self.crawler is not None:
            self.crawler.stats.inc_value(LOST_STAT, lines_lost)
        if self.failure is not None or exc is None:
            return
        self.failure = reason = store_failure(exc) or "manifest-failed"
        self._report(reason, exc, kept)
        if self.crawler is not None and self.crawler.crawling:
            deferred_from_coro(self._close(reason.replace("-", "_")))

    def _report(self, reason: str, exc: BaseException, kept: str) -> None:
        detail = getattr(exc, "strerror", None) or str(exc)
        if self._said_by_the_store(reason, exc):
            if kept:
                logger.info("Manifest %s not updated (%s: %s); %s", self.path, reason, detail, kept)
            return
        logger.error("imgcrawl: cannot write the manifest %s (%s): %s%s", self.path, detail,
                     MANIFEST_FAILURES[reason], f"; {kept}" if kept else "")

    def _said_by_the_store(self, reason: str, exc: BaseException) -> bool:
        """True when the crawl's one line about IMAGES_STORE covers this failure: the manifest
        is in the store, and its disk is full (said here if no image met it first) or the
        pipeline has said the store is not writable. A manifest directory alone not
        writable gets its own line, which names the file."""
        store = self.crawler.settings.get("IMAGES_STORE") if self.crawler else None
        if not store or reason not in STORE_FAILURES:
            return False
        if not Path(self.path).resolve().is_relative_to(Path(store).resolve()):
            return False
        store_failures = StoreFailures.of(self.crawler, store)
        if reason == "disk-full":
            store_failures.report(reason, exc)
            return True
        return store_failures.failed

    async def _close(self, reason: str) -> None:
        try:
            await self.crawler.engine.close_spider_async(reason=reason)
        except RuntimeError:  # the crawl has already closed: nothing left to stop
            pass
