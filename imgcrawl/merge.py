"""Manifest lines merged into one line per image URL, and the per-image manifest on disk.

* :func:`merge_manifest` (pure) merges manifest lines into one line per image URL, its
  latest, in page order; it reads plain iterables of lines, so a bucket's objects serve as
  well as files (:mod:`imgcrawl.s3`).
* :class:`LocalManifest` keeps such a manifest in a directory: each crawl writes to a
  journal of its own and merges it when it ends (layout in its docstring).

Standard library only: no Scrapy, no Twisted.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

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
