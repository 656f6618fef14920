"""The manifest: one JSON line per image (``FEEDS``), or CSV with ``-o images.csv``.

* :func:`merge_manifest` (pure) merges manifest lines into one line per image URL, its
  latest, in page order; :class:`LocalManifest` keeps such a per-image manifest on disk:
  each crawl writes to a journal of its own and merges it when it ends (layout below).
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

import fcntl
import io
import json
import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from scrapy.exporters import CsvItemExporter
from scrapy.extensions.feedexport import FileFeedStorage
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.threads import deferToThread

from imgcrawl.failures import store_failure

logger = logging.getLogger(__name__)

# The FEEDS option that makes a feed the per-image manifest (merged, one line per image URL)
# instead of a file each crawl appends to.
PER_IMAGE = "imgcrawl_per_image"
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def is_per_image(feed_options: dict | None) -> bool:
    return bool((feed_options or {}).get(PER_IMAGE))


# -- merging (pure) -------------------------------------------------------------------------

# The scratch database: every line in the order given, and the latest line of each URL with
# what orders it. Superseded lines stay in ``lines`` (on disk, never in memory).
_SCRATCH_SCHEMA = """
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
PRAGMA locking_mode = EXCLUSIVE;
PRAGMA cache_size = -16384;  -- KiB: twice as fast as the default 2 MB on a million lines
CREATE TABLE lines (seq INTEGER PRIMARY KEY, line BLOB NOT NULL);
CREATE TABLE latest (url TEXT PRIMARY KEY, seq INTEGER NOT NULL, page INTEGER NOT NULL,
                     position INTEGER) WITHOUT ROWID;
"""
# Made once every line is staged; the merged lines are then read in its order, so SQLite
# sorts only these small rows, never the lines themselves.
_PAGE_ORDER_INDEX = "CREATE INDEX page_order ON latest (page, position IS NULL, position, seq)"
_IN_PAGE_ORDER = (
    "SELECT line FROM latest JOIN lines USING (seq) ORDER BY page, position IS NULL, position, seq"
)
_MERGE_BATCH = 1000  # lines per SQLite call (and in memory at once)


def manifest_key(line: bytes) -> tuple[str, str, int | None] | None:
    """``(url, page_url, position)`` of a manifest line; None when the line is not a JSON
    object with a string ``url`` (a torn or foreign line)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("url"), str):
        return None
    page, position = record.get("page_url"), record.get("position")
    return (record["url"], page if isinstance(page, str) else "",
            position if type(position) is int else None)


def merge_manifest(
    sources: Iterable[Iterable[bytes | str]],
    *,
    scratch_dir: str | os.PathLike | None = None,
    on_bad_line: Callable[[int, bytes], None] | None = None,
) -> Iterator[bytes]:
    """Merge manifest lines into one line per image URL, in page order.

    ``sources`` are read once each, oldest first: the current manifest, then each crawl's
    lines in the order they were written. A later line for a URL replaces an earlier one.
    The result is the latest line of every URL, byte for byte as given, each ending in a
    newline: pages in the order they first appear across the sources (a page already in
    the manifest keeps its place, a new one comes after), each page's images by
    ``position``, lines without one after those with one, in the order given. Merging a
    merged manifest again gives it back unchanged.

    A line that is not a JSON object with a string ``url`` is left out and reported as
    ``on_bad_line(index of its source, line)``; blank lines are skipped.

    Bounded memory: lines are staged a batch at a time in a temporary SQLite file in
    ``scratch_dir`` (about the size of the input) and read back in order through an index;
    memory holds one batch of lines, SQLite's page cache (16 MB) and one entry per page URL
    (not per image). Time: O(n log n) in the lines. The scratch file is deleted when the
    iterator is exhausted or closed.
    """
    handle, scratch = tempfile.mkstemp(prefix=".imgcrawl-merge-", suffix=".sqlite", dir=scratch_dir)
    os.close(handle)
    db = sqlite3.connect(scratch, isolation_level=None)
    try:
        db.executescript(_SCRATCH_SCHEMA)
        pages: dict[str, int] = {}
        lines: list[tuple[int, bytes]] = []
        latest: list[tuple[str, int, int, int | None]] = []
        seq = 0
        db.execute("BEGIN")
        for index, source in enumerate(sources):
            for line in source:
                line = (line.encode() if isinstance(line, str) else line).rstrip(b"\r\n")
                if not line.strip():
                    continue
                key = manifest_key(line)
                if key is None:
                    if on_bad_line is not None:
                        on_bad_line(index, line)
                    continue
                url, page, position = key
                seq += 1
                lines.append((seq, line))
                latest.append((url, seq, pages.setdefault(page, len(pages)), position))
                if len(lines) >= _MERGE_BATCH:
                    _stage(db, lines, latest)
        _stage(db, lines, latest)
        db.execute(_PAGE_ORDER_INDEX)
        db.execute("COMMIT")
        for (line,) in db.execute(_IN_PAGE_ORDER):
            yield line + b"\n"
    finally:
        db.close()
        os.unlink(scratch)


def _stage(db: sqlite3.Connection, lines: list, latest: list) -> None:
    db.executemany("INSERT INTO lines VALUES (?, ?)", lines)
    db.executemany("INSERT OR REPLACE INTO latest VALUES (?, ?, ?, ?)", latest)
    lines.clear()
    latest.clear()


# -- the per-image manifest on disk ---------------------------------------------------------


@dataclass
class MergeReport:
    """What one :meth:`LocalManifest.merge` did."""

    journals: list[Path] = field(default_factory=list)  # merged, now in the history
    images: int = 0  # lines in the merged manifest
    cut: list[Path] = field(default_factory=list)  # journals a killed crawl left half a line in
    bad_lines: dict[Path, int] = field(default_factory=dict)  # lines left out, by file


class LocalManifest:
    """A per-image manifest in a directory (local, or a network file system with working
    ``flock``)::

        manifest.jsonl                    one line per image URL (merge_manifest's output)
        crawls/manifest-<UTC time>-<id>.jsonl   each crawl's lines as written: the history
        crawls/pending/<the same name>    a journal not merged yet: its crawl is running,
                                          or was killed
        crawls/.manifest.lock             held while merging: one merge at a time

    A crawl writes each line to its own journal as its image is stored, holding an
    ``flock`` on it for as long as it runs. :meth:`merge`, at the end of a crawl, takes
    every journal whose lock it can get (its crawl has ended: finished, stopped or killed),
    merges them oldest first after the current manifest, replaces ``manifest.jsonl``
    atomically and then moves them to ``crawls/``. Killed before the replace, the journals
    are still pending and the next merge takes them; killed between the replace and the
    moves, the next merge applies them again, which changes nothing. Workers sharing a
    store never take each other's running journal, and their merges wait for each other.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.history = self.path.parent / "crawls"
        self.pending = self.history / "pending"
        self.lock_path = self.history / f".{self.path.stem}.lock"
        # This manifest's journals only: another manifest in the directory may be named
        # like one of them with more after (manifest-a.jsonl beside manifest.jsonl).
        self.journal_name = re.compile(re.escape(self.path.stem) + r"-\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}\.jsonl")

    def open_journal(self) -> tuple[int, Path]:
        """A new journal for this crawl (O_APPEND), locked while the descriptor is open."""
        self.pending.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.pending / f"{self.path.stem}-{stamp}-{os.urandom(4).hex()}.jsonl"
        # Created and locked under a hidden name, then renamed into place: a merge never
        # sees a journal before its crawl holds the lock.
        hidden = path.with_name("." + path.name)
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, path)
        except BaseException:
            os.close(fd)
            hidden.unlink(missing_ok=True)
            raise
        return fd, path

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the merge lock (waiting for another crawl's merge to end)."""
        self.history.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read_merged(self, use: Callable[[Iterable[bytes]], object]) -> object:
        """``use(lines)`` under the merge lock, ``lines`` re-readable (each iteration reads
        the manifest from its start): what it makes reflects one whole merged manifest, and
        a later merge's reader comes after it."""
        with self.locked():
            return use(FileLines(self.path))

    def merge(self, overwrite: bool = False) -> MergeReport:
        """Merge every ended crawl's journal into the manifest (see the class). With
        ``overwrite`` the manifest is made from the newest of them alone (``FEEDS``
        ``overwrite``); the older ones go to the history unmerged."""
        report = MergeReport()
        with self.locked():
            journals = self._ended_journals()
            try:
                if journals:
                    self._merge(journals, overwrite, report)
                for path, _ in journals:
                    if path.stat().st_size:
                        os.replace(path, self.history / path.name)
                        report.journals.append(self.history / path.name)
                    else:
                        path.unlink()  # killed before its first line
            finally:
                for _, fd in journals:
                    os.close(fd)
        return report

    def _ended_journals(self) -> list[tuple[Path, int]]:
        """The pending journals whose crawl has ended, oldest first, each locked by us."""
        ended = []
        for path in sorted(self.pending.glob(f"{self.path.stem}-*.jsonl")):
            if not self.journal_name.fullmatch(path.name):
                continue
            try:
                fd = os.open(path, os.O_RDWR | O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # its crawl is still running: merged when it ends
                continue
            except BaseException:
                os.close(fd)
                raise
            ended.append((path, fd))
        return ended

    def _merge(self, journals: list[tuple[Path, int]], overwrite: bool, report: MergeReport) -> None:
        for path, fd in journals:
            if cut_half_line(fd):
                report.cut.append(path)
        if overwrite:
            journals = journals[-1:]
        names = ([] if overwrite else [self.path]) + [path for path, _ in journals]
        sources = ([] if overwrite else [FileLines(self.path)]) + [_DescriptorLines(fd) for _, fd in journals]

        def bad_line(index: int, line: bytes) -> None:
            report.bad_lines[names[index]] = report.bad_lines.get(names[index], 0) + 1

        merged = merge_manifest(sources, scratch_dir=self.history, on_bad_line=bad_line)
        tmp = self.path.with_name(f".{self.path.name}.{os.urandom(6).hex()}.tmp")
        try:
            with tmp.open("xb") as out:
                for line in merged:
                    out.write(line)
                    report.images += 1
                out.flush()
                os.fsync(out.fileno())  # on disk before it replaces the old manifest
            os.replace(tmp, self.path)
        except BaseException:
            merged.close()
            tmp.unlink(missing_ok=True)
            raise


class FileLines:
    """The lines of a file, read from its start at each iteration; none if it is missing."""

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self) -> Iterator[bytes]:
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return
        with f:
            yield from f


class _DescriptorLines:
    """The lines of an open file, from its start, read through its descriptor without closing
    it: closing any descriptor of a file drops this process's lock on it where ``flock`` is
    emulated with POSIX locks (NFS)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __iter__(self) -> Iterator[bytes]:
        with open(self.fd, "rb", closefd=False) as f:
            f.seek(0)
            yield from f


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


def cut_half_line(fd: int) -> bool:
    """:func:`repair_jsonl` on an open file."""
    end = pos = os.fstat(fd).st_size
    if end == 0 or os.pread(fd, 1, end - 1) == b"\n":
        return False
    while pos > 0:
        step = min(1 << 16, pos)
        pos -= step
        newline = os.pread(fd, step, pos).rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, pos + newline + 1)
            return True
    os.ftruncate(fd, 0)
    return True


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
    ``IMAGES_STORE`` and the pipeline has already said the store is full or read-only, that
    one line is not said again. The images already stored stay in the index, so the next
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
        if self.crawler is not None and self.crawler.engine is not None:
            deferred_from_coro(self._close(reason.replace("-", "_")))

    def _report(self, reason: str, exc: BaseException, kept: str) -> None:
        detail = getattr(exc, "strerror", None) or str(exc)
        store = self.crawler.settings.get("IMAGES_STORE") if self.crawler else None
        if store and self.crawler.stats.get_value(f"imgcrawl/failed/{reason}"):
            # The pipeline has said that IMAGES_STORE is full / not writable; the manifest
            # in it failing for the same reason is part of what that line said.
            if Path(self.path).resolve().is_relative_to(Path(store).resolve()):
                if kept:
                    logger.info("Manifest %s not updated (%s: %s); %s", self.path, reason, detail, kept)
                return
        logger.error("imgcrawl: cannot write the manifest %s (%s): %s%s", self.path, detail,
                     MANIFEST_FAILURES[reason], f"; {kept}" if kept else "")

    async def _close(self, reason: str) -> None:
        try:
            await self.crawler.engine.close_spider_async(reason=reason)
        except RuntimeError:  # the crawl has already closed: nothing left to stop
            pass
