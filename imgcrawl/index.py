"""What is already stored: image URL -> stored record, and content (sha256) -> record.

Lets the pipeline answer "already stored and fresh?" with one indexed lookup and a few
``stat`` calls (a HEAD each in a bucket), instead of Scrapy's read-and-MD5-the-whole-file
check. Pure (sqlite3 and files only, no reactor). One :class:`SQLiteIndex` must be used
from one thread at a time; the pipeline gives it a dedicated thread. :class:`RedisIndex` has the same interface and is
shared by every worker of a distributed crawl (redis-py only, imported when used).
:class:`StoredImages` joins either index with the files it names: :class:`LocalFiles`, or
the objects of an S3 store (:class:`imgcrawl.s3.S3Objects`), which answer the same calls.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    url TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS contents (
    sha256 TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
"""


OPEN_ATTEMPTS = 100  # a few seconds of another crawl holding the new database's lock


class SQLiteIndex:
    def __init__(self, path: str | Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: created on the reactor thread, used on the index thread.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # WAL + NORMAL: a commit per image costs no fsync, and a crash loses at most the
        # last few records (their images are then fetched again, never half-stored).
        for attempt in range(OPEN_ATTEMPTS):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(SCHEMA)
                break
            except sqlite3.OperationalError as exc:
                # Two crawls opening a new store at once: switching it to WAL takes a lock
                # that SQLite's busy timeout does not wait for. The loser tries again.
                if (exc.sqlite_errorcode or 0) & 0xFF != sqlite3.SQLITE_BUSY or attempt == OPEN_ATTEMPTS - 1:
                    self._db.close()
                    raise
                time.sleep(0.05)

    def get(self, url: str) -> tuple[dict, float] | None:
        row = self._db.execute(
            "SELECT record, stored_at FROM images WHERE url = ?", (url,)
        ).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def put(self, url: str, record: dict, stored_at: float | None = None) -> None:
        """Record ``url``; a record with a ``sha256`` also becomes the holder of those bytes.
        One transaction, so a killed crawl never leaves the two tables disagreeing."""
        text = json.dumps(record, sort_keys=True)
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO images (url, record, stored_at) VALUES (?, ?, ?)",
                (url, text, stored_at or time.time()),
            )
            if record.get("sha256"):
                self._db.execute(
                    "INSERT OR REPLACE INTO contents (sha256, record) VALUES (?, ?)",
                    (record["sha256"], text),
                )

    def holder(self, sha256: str) -> dict | None:
        """The last stored record with these bytes (any URL), or None."""
        row = self._db.execute("SELECT record FROM contents WHERE sha256 = ?", (sha256,)).fetchone()
        return json.loads(row[0]) if row else None

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class RedisIndex:
    """The index as two Redis hashes (url -> record and time; sha256 -> record), shared by
    all workers."""

    KEY = "imgcrawl:index"

    def __init__(self, url: str, key: str = KEY):
        import redis  # the `distributed` extra; not needed for local crawls

        self._redis = redis.Redis.from_url(url)
        self.key = key
        self.contents_key = f"{key}:contents"

    def get(self, url: str) -> tuple[dict, float] | None:
        raw = self._redis.hget(self.key, url)
        if raw is None:
            return None
        entry = json.loads(raw)
        return entry["record"], entry["stored_at"]

    def put(self, url: str, record: dict, stored_at: float | None = None) -> None:
        entry = {"record": record, "stored_at": stored_at or time.time()}
        with self._redis.pipeline() as tx:  # MULTI/EXEC: both hashes or neither
            tx.hset(self.key, url, json.dumps(entry, sort_keys=True))
            if record.get("sha256"):
                tx.hset(self.contents_key, record["sha256"], json.dumps(record, sort_keys=True))
            tx.execute()

    def holder(self, sha256: str) -> dict | None:
        raw = self._redis.hget(self.contents_key, sha256)
        return json.loads(raw) if raw is not None else None

    def __len__(self) -> int:
        return self._redis.hlen(self.key)

    def close(self) -> None:
        self._redis.close()


class StoreFiles(Protocol):
    """What :class:`StoredImages` asks of a store, with paths relative to it."""

    def present(self, paths: Iterable[str]) -> bool: ...

    def find(self, paths: Iterable[str]) -> dict | None:
        """The first of ``paths`` there as a whole file: ``{"path", "stored_at"}``."""

    def remove(self, paths: Iterable[str]) -> None: ...


class LocalFiles:
    """A store directory's files, by ``stat`` and ``unlink``."""

    def __init__(self, root: Path):
        self.root = root

    def present(self, paths: Iterable[str]) -> bool:
        return all((self.root / p).exists() for p in paths)

    def find(self, paths: Iterable[str]) -> dict | None:
        for path in paths:
            try:
                st = os.stat(f"{self.root}/{path}")
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                return {"path": path, "stored_at": st.st_mtime}
        return None

    def remove(self, paths: Iterable[str]) -> None:
        for p in paths:
            (self.root / p).unlink(missing_ok=True)


class StoredImages:
    """An index and the store's files together: a record counts only while its files
    are there. Its methods stat and remove files, so the pipeline runs them on its index
    thread, never on the reactor thread."""

    def __init__(self, index: SQLiteIndex | RedisIndex, files: StoreFiles, thumbs_signature: str, max_age: float):
        self.index = index
        self.files = files
        self.thumbs_signature = thumbs_signature  # the IMAGES_THUMBS the thumbnails were made for
        self.max_age = max_age  # seconds (IMAGES_EXPIRES)

    def lookup(self, url: str, unrecorded: Iterable[str] = ()) -> tuple[str, dict] | None:
        """``("uptodate", record)`` for a fresh, complete image; ``("rethumb", record)`` when
        only its thumbnails are for other sizes; ``("adopt", {"path", "stored_at"})`` when the
        URL has no record but a fresh file is at one of the ``unrecorded`` paths (where its
        download would have been written); None when it must be downloaded."""
        return self.check(self.index.get(url), unrecorded)

    def check(self, found: tuple[dict, float] | None, unrecorded: Iterable[str] = ()) -> tuple[str, dict] | None:
        """:meth:`lookup` once the index has answered ``found``: the files' part alone, which
        for a bucket may run on other threads than the index's."""
        if not found:
            return self._unrecorded(unrecorded)
        record, stored_at = found
        if time.time() - stored_at > self.max_age or not self.files.present([record["path"]]):
            return None
        if record.get("thumbs_signature") != self.thumbs_signature:
            return "rethumb", record
        if not self.files.present(record.get("thumbs", {}).values()):
            return None
        return "uptodate", record

    def _unrecorded(self, paths: Iterable[str]) -> tuple[str, dict] | None:
        """A crawl killed between a worker's write and the index commit that records it
        leaves the file without its record (and a new index knows none of a bucket's
        objects). Files are written by atomic rename (objects whole), so one under its final
        name is whole: it is recorded again from its bytes, not fetched again."""
        found = self.files.find(paths)
        if found is None or time.time() - found["stored_at"] > self.max_age:  # IMAGES_EXPIRES
            return None
        return "adopt", found

    def keep(self, record: dict, stored_at: float | None = None) -> dict:
        """Record an image once: bytes already stored under another URL are kept once, this
        URL's record points at that copy and the files just written for it are removed."""
        holder = self.index.holder(record["sha256"])
        if holder and holder["url"] != record["url"] and holder.get("thumbs_signature") == self.thumbs_signature:
            kept = [holder["path"], *holder["thumbs"].values()]
            if self.files.present(kept):
                self.files.remove({record["path"], *record["thumbs"].values()} - set(kept))
                record = {**record, "path": holder["path"], "thumbs": holder["thumbs"]}
        self.index.put(record["url"], record, stored_at)
        return record
