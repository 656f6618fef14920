"""What is already stored: image URL -> stored record, and content (sha256) -> record.

Lets the pipeline answer "already stored and fresh?" with one indexed lookup and a few
``stat`` calls (a HEAD each in a bucket), instead of Scrapy's read-and-MD5-the-whole-file
check. Pure (sqlite3 and files only, no reactor). One :class:`SQLiteIndex` must be used
from one thread at a time; the pipeline gives it a dedicated thread. :class:`RedisIndex` has
the same interface and is shared by every worker of a distributed crawl (redis-py only,
imported when used). :class:`StoredImages` joins either index with the files it names:
:class:`LocalFiles`, or the objects of an S3 store (:class:`imgcrawl.s3.S3Objects`), which
answer the same calls.
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

from imgcrawl import phash
from imgcrawl.phash import NearIndex

# One transaction: a new index costs each page once (in the WAL), not once per table.
SCHEMA = """
BEGIN;
CREATE TABLE IF NOT EXISTS images (
    url TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    stored_at REAL NOT NULL,
    etag TEXT,
    last_modified TEXT,
    phash TEXT
);
CREATE TABLE IF NOT EXISTS contents (
    sha256 TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL
);
COMMIT;
"""
# Columns added to ``images`` after its first release (in SCHEMA for a new index); an index
# made before them gets them when it is opened (NULL in its old rows: no validators, and no
# hash to find near-duplicates by, until each image is stored again).
ADDED_COLUMNS = {"etag": "TEXT", "last_modified": "TEXT", "phash": "TEXT"}
# What the server said an image's bytes are (ETag, Last-Modified): kept in their columns, and
# in the record get() returns, never in the stored record text.
VALIDATORS = ("etag", "last_modified")


def without_validators(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VALIDATORS}


def with_validators(record: dict, values) -> dict:
    return {**record, **{k: v for k, v in zip(VALIDATORS, values) if v is not None}}


def compared_by(record: dict | None) -> str | None:
    """The hash later images are compared with for near-duplicates: that of an image that
    resembles no earlier one; None for a near-duplicate, or an image with no hash."""
    if not record or not record.get("phash") or record.get("near_duplicate_of"):
        return None
    return record["phash"]


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
                self._add_columns()
                break
            except sqlite3.OperationalError as exc:
                if self._db.in_transaction:
                    self._db.rollback()
                # Two crawls opening a new store at once: switching it to WAL takes a lock
                # that SQLite's busy timeout does not wait for. The loser tries again.
                if (exc.sqlite_errorcode or 0) & 0xFF != sqlite3.SQLITE_BUSY or attempt == OPEN_ATTEMPTS - 1:
                    self._db.close()
                    raise
                time.sleep(0.05)

    def _add_columns(self) -> None:
        """Bring an index made by an earlier release up to this schema."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(images)")}
        for name, kind in ADDED_COLUMNS.items():
            if name not in present:
                try:
                    self._db.execute(f"ALTER TABLE images ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # another crawl added it first
                        raise

    def get(self, url: str) -> tuple[dict, float] | None:
        row = self._db.execute(
            "SELECT record, stored_at, etag, last_modified FROM images WHERE url = ?", (url,)
        ).fetchone()
        return (with_validators(json.loads(row[0]), row[2:]), row[1]) if row else None

    def put(self, url: str, record: dict, stored_at: float | None = None) -> None:
        """Record ``url``; a record with a ``sha256`` also becomes the holder of those bytes.
        One transaction, so a killed crawl never leaves the two tables disagreeing."""
        text = json.dumps(without_validators(record), sort_keys=True)
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO images (url, record, stored_at, etag, last_modified, phash) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (url, text, stored_at or time.time(), *(record.get(k) for k in VALIDATORS), compared_by(record)),
            )
            if record.get("sha256"):
                self._db.execute(
                    "INSERT OR REPLACE INTO contents (sha256, record) VALUES (?, ?)",
                    (record["sha256"], text),
                )

    def forget_holder(self, sha256: str) -> None:
        self._db.execute("DELETE FROM contents WHERE sha256 = ?", (sha256,))

    def claim(self, name: str, url: str) -> bool:
        """Take ``name`` for ``url`` unless another URL has it; True if ``url`` has it now."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")  # the read below sees no other crawl's claim half-made
            self._db.execute("INSERT OR IGNORE INTO names (name, url) VALUES (?, ?)", (name, url))
            return self._db.execute("SELECT url FROM names WHERE name = ?", (name,)).fetchone()[0] == url

    def phashes_since(self, seen: int) -> tuple[list[tuple[str, str]], int]:
        """What changed since ``seen``, and the ``seen`` to ask with next: ``(url, hex)`` to
        compare later images with that URL's image, ``(url, "")`` not to. A record written
        again gets a new rowid, so rows past ``seen`` are those written since (no log to keep:
        the hash is a column of the row the record is in anyway)."""
        rows = self._db.execute(
            "SELECT rowid, url, phash FROM images WHERE rowid > ? ORDER BY rowid", (seen,)
        ).fetchall()
        return [(url, phash or "") for _, url, phash in rows], (rows[-1][0] if rows else seen)

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
        self.names_key = f"{key}:names"  # file name -> the URL that has it
        self.phashes_key = f"{key}:phashes"  # the near-duplicate log every worker reads

    def get(self, url: str) -> tuple[dict, float] | None:
        raw = self._redis.hget(self.key, url)
        if raw is None:
            return None
        entry = json.loads(raw)
        return with_validators(entry["record"], [entry.get(k) for k in VALIDATORS]), entry["stored_at"]

    def put(self, url: str, record: dict, stored_at: float | None = None) -> None:
        kept = without_validators(record)
        entry = {"record": kept, "stored_at": stored_at or time.time(), **{k: record.get(k) for k in VALIDATORS}}
        before = self.get(url)
        compared = compared_by(record)
        with self._redis.pipeline() as tx:  # MULTI/EXEC: all of it or none
            tx.hset(self.key, url, json.dumps(entry, sort_keys=True))
            if record.get("sha256"):
                tx.hset(self.contents_key, record["sha256"], json.dumps(kept, sort_keys=True))
            if compared != compared_by(before[0] if before else None):  # the log has changes only
                tx.rpush(self.phashes_key, json.dumps([url, compared or ""]))
            tx.execute()

    def forget_holder(self, sha256: str) -> None:
        self._redis.hdel(self.contents_key, sha256)

    def claim(self, name: str, url: str) -> bool:
        if self._redis.hsetnx(self.names_key, name, url):
            return True
        return self._redis.hget(self.names_key, name) == url.encode()

    def phashes_since(self, seen: int) -> tuple[list[tuple[str, str]], int]:
        """As :meth:`SQLiteIndex.phashes_since`, from a log each worker appends to when a
        URL's hash to compare with changes."""
        rows = [tuple(json.loads(raw)) for raw in self._redis.lrange(self.phashes_key, seen, -1)]
        return rows, seen + len(rows)

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
    thread, never on the reactor thread.

    With ``near_distance`` set, each image kept is compared with the others by perceptual
    hash: one within that many bits of an earlier one gets ``near_duplicate_of`` (its URL),
    and with ``skip_near`` is not kept as a file of its own. Only images that resemble no
    earlier one are looked up against, so every near-duplicate names the first of its group.
    """

    def __init__(self, index: SQLiteIndex | RedisIndex, files: StoreFiles, thumbs_signature: str, max_age: float,
                 near_distance: int | None = None, skip_near: bool = False):
        self.index = index
        self.files = files
        self.thumbs_signature = thumbs_signature  # the IMAGES_THUMBS the thumbnails were made for
        self.max_age = max_age  # seconds (IMAGES_EXPIRES)
        self.near = NearIndex(near_distance) if near_distance is not None else None
        self.skip_near = skip_near
        self.near_seen = 0  # where the index's changes to the hashes were last read up to

    def lookup(self, url: str, unrecorded: Iterable[str] = ()) -> tuple[str, dict] | None:
        """``("uptodate", record)`` for a fresh, complete image; ``("rethumb", record)`` when
        only its thumbnails are for other sizes; ``("revalidate", record)`` when it is
        complete but due again (``IMAGES_EXPIRES``) and the server gave validators to ask
        "changed since?" with; ``("adopt", {"path", "stored_at"})`` when the URL has no
        record but a fresh file is at one of the ``unrecorded`` paths (where its download
        would have been written); None when it must be downloaded."""
        return self.check(self.index.get(url), unrecorded)

    def check(self, found: tuple[dict, float] | None, unrecorded: Iterable[str] = ()) -> tuple[str, dict] | None:
        """:meth:`lookup` once the index has answered ``found``: the files' part alone, which
        for a bucket may run on other threads than the index's."""
        if not found:
            return self._unrecorded(unrecorded)
        record, stored_at = found
        expired = time.time() - stored_at > self.max_age
        if not self.files.present([record["path"]]):
            return None
        if record.get("thumbs_signature") != self.thumbs_signature:
            return None if expired else ("rethumb", record)
        if not self.files.present(record.get("thumbs", {}).values()):
            return None
        if expired:
            return ("revalidate", record) if any(record.get(k) for k in VALIDATORS) else None
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

    def keep(self, record: dict, stored_at: float | None = None) -> tuple[dict, str]:
        """Record an image once: ``(record, how)``. ``how`` is "stored"; "duplicate" when its
        bytes were already stored under another URL (this URL's record points at that copy
        and the files just written for it are removed); "near-duplicate" when it resembles
        an earlier image and ``skip_near`` points it at that image's files the same way."""
        previous = self.index.get(record["url"])
        if previous and previous[0].get("sha256") not in (None, record["sha256"]):
            self._forget_overwritten(previous[0]["sha256"], record["path"])
        how = "stored"
        holder = self.index.holder(record["sha256"])
        # Once kept at a path, those bytes stay there: a later download of them (by another
        # URL, or by this one after another URL's record took them over) points at it.
        if holder and holder["path"] != record["path"] and (shared := self._share_files(record, holder)):
            record, how = shared, "duplicate"
        if self.near is not None and record.get("phash"):
            record, how = self._near_duplicate(record, how)
        self.index.put(record["url"], record, stored_at)
        return record, how

    def _forget_overwritten(self, sha256: str, path: str) -> None:
        """The URL's new bytes were just written over its old file: that file no longer
        holds the old bytes, so later copies of them must not be pointed at it."""
        holder = self.index.holder(sha256)
        if holder and holder["path"] == path:
            self.index.forget_holder(sha256)

    def _share_files(self, record: dict, other: dict) -> dict | None:
        """``record`` pointed at ``other``'s files, the files written for it removed; None
        when ``other``'s are not all there (or are thumbnails of other sizes)."""
        if other.get("thumbs_signature") != self.thumbs_signature:
            return None
        kept = [other["path"], *other["thumbs"].values()]
        if not self.files.present(kept):
            return None
        self.files.remove({record["path"], *record["thumbs"].values()} - set(kept))
        return {**record, "path": other["path"], "thumbs": other["thumbs"]}

    def _near_duplicate(self, record: dict, how: str) -> tuple[dict, str]:
        """Marked if it resembles an earlier image (and pointed at its files when skipping);
        else later images are compared with it. The index keeps which (``compared_by``)."""
        url, value = record["url"], phash.from_hex(record["phash"])
        self._catch_up()
        found = self.near.nearest(value, exclude=url)
        if found is None:
            self.near.add(url, value)
            return record, how
        self.near.remove(url)  # in case it was compared with before it changed
        record = {**record, "near_duplicate_of": found[0]}
        if self.skip_near and how == "stored":
            earlier = self.index.get(found[0])
            if earlier and (shared := self._share_files(record, earlier[0])):
                return shared, "near-duplicate"
        return record, how

    def _catch_up(self) -> None:
        """Take in the hashes other crawls (other workers) have logged since last time."""
        rows, self.near_seen = self.index.phashes_since(self.near_seen)
        for url, value in rows:
            if value:
                self.near.add(url, phash.from_hex(value))
            else:
                self.near.remove(url)
