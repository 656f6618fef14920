"""Where stored bytes go: a local directory or an S3 bucket, the paths inside it, and the
work of storing.

The image workers write the files (atomic rename) or objects themselves, so the pipeline's
store is only asked where things go. :func:`store_path` is the one place a relative path
from a hook (``file_path``, ``thumb_path``) becomes a file name, and it refuses anything
that would land outside the store (:meth:`imgcrawl.s3.S3Config.key` does the same for
keys). :class:`ImageStorage` stores and looks up images without blocking the reactor.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

from scrapy.utils.defer import maybe_deferred_to_future

from imgcrawl import imaging, naming, s3
from imgcrawl.failures import Failed
from imgcrawl.index import VALIDATORS, LocalFiles, RedisIndex, SQLiteIndex, StoredImages
from imgcrawl.workerpool import BatchingThread, ProcessWorkers, Threads, ThreadWorkers

# Longest file name most filesystems take (ext4, APFS, NTFS): longer fails on write.
NAME_MAX = naming.NAME_MAX
# Where images named by IMGCRAWL_FILE_NAME are written before their name is known (it may
# use their facts); a crawl killed meanwhile leaves files here, cleared an hour later.
STAGING = ".imgcrawl/staging"
STAGING_MAX_AGE = 3600
# Kept from an image's old record when its thumbnails are made again.
CARRIED = (*VALIDATORS, "near_duplicate_of")


class LocalStore:
    """``IMAGES_STORE`` as a local directory (``STORE_SCHEMES`` "" and "file").

    Unlike Scrapy's ``FSFilesStore`` it creates nothing when built: the pipeline's
    ``open_spider`` makes the directory and reports a failure there in one line.
    """

    writer = imaging.FileSystem  # the workers write the files at absolute paths
    connections = 0  # its files are checked on the index thread, a stat at a time

    def __init__(self, uri: str):
        self.root = Path(str(uri).removeprefix("file://")).resolve()
        self.files = LocalFiles(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def configure(self, settings, thumbs_signature: str) -> None:
        """Nothing to set up: the index, made at spider open, is the store's first write."""

    def locate(self, relative: str) -> str:
        return store_path(self.root, relative)

    def default_index(self) -> Path:
        return self.root / ".imgcrawl" / "index.sqlite"

    def index_failure(self, path: Path, exc: BaseException) -> None:
        """None: an index that cannot be made is the store's own failure (STORE_FAILURES)."""

    def probe(self) -> None:
        """Nothing to check before the crawl: the index is made in the store."""


class ObjectStore:
    """``IMAGES_STORE`` as ``s3://BUCKET/PREFIX/`` (``STORE_SCHEMES`` "s3"). Built with the
    URI alone, as Scrapy builds stores; :meth:`configure` reads the AWS settings."""

    def __init__(self, uri: str):
        self.given = str(uri)
        self.objects: s3.S3Objects | None = None

    def __str__(self) -> str:
        return self.objects.config.uri if self.objects else self.given

    def configure(self, settings, thumbs_signature: str) -> None:
        """Raises ValueError (a bad setting) or ImportError (no botocore); no network yet."""
        config = s3.config_from_settings(self.given, settings)
        s3.client(config)
        self.objects = s3.S3Objects(config, thumbs_signature, settings.getint("DOWNLOAD_MAXSIZE"))

    @property
    def files(self) -> s3.S3Objects:
        return self.objects

    @property
    def connections(self) -> int:
        """Threads that check the bucket: each check waits on a round trip."""
        return self.objects.config.max_pool_connections or s3.DEFAULT_CONNECTIONS

    @property
    def writer(self) -> s3.S3Objects:
        return self.objects

    def locate(self, relative: str) -> str:
        return self.objects.locate(relative)

    def default_index(self) -> Path:
        return s3.local_index_path(self.objects.config)

    def index_failure(self, path: Path, exc: BaseException) -> str:
        """The line for an index that cannot be made: it is not in the bucket, so say where."""
        detail = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        return (f"cannot write the index of IMAGES_STORE {self} at {path} ({detail}): give this user write "
                "permission there or choose another file with -s IMGCRAWL_INDEX=/path/to/index.sqlite")

    def probe(self) -> None:
        self.objects.probe()


class UnsupportedStore:
    """Any other ``IMAGES_STORE`` scheme (Scrapy's ``gs://``, ``ftp://``): refused."""

    def __init__(self, uri: str):
        raise ValueError(f"IMAGES_STORE={uri!r}: imgcrawl stores to a local directory or s3://BUCKET/PREFIX/")


class StoreSchemes(dict):
    """``STORE_SCHEMES``: a scheme not listed is an :class:`UnsupportedStore`."""

    def __missing__(self, scheme: str) -> type:
        return UnsupportedStore


def store_path(root: Path, relative: str) -> str:
    """``root/relative`` as a string, refusing anything that would land outside ``root``."""
    if "\x00" in relative:
        raise Failed("bad-path", f"NUL in path {relative!r}")
    if any(len(part.encode()) > NAME_MAX for part in relative.split("/")):
        raise Failed("bad-path", f"a name in {relative[:80]!r}... is over {NAME_MAX} bytes")
    parent, _, name = relative.rpartition("/")
    if name in ("", ".", ".."):
        raise Failed("bad-path", f"{relative!r} does not name a file")
    # Resolving costs a syscall per path component; the directories are few (full/,
    # thumbs/<name>/), so each is resolved once. A symlinked leaf is harmless: files are
    # written by rename, which replaces the link, never its target.
    directory = _resolved_inside(root, parent)
    if directory is None:
        raise Failed("bad-path", f"{relative!r} is outside the image store")
    return f"{directory}/{name}"


@functools.lru_cache(maxsize=4096)
def _resolved_inside(root: Path, parent: str) -> str | None:
    directory = (root / parent).resolve()
    return str(directory) if directory.is_relative_to(root.resolve()) else None


def thumbs_signature(thumbs: dict[str, tuple[int, int]]) -> str:
    """Which IMAGES_THUMBS made an image's thumbnails, as recorded with it."""
    return json.dumps(sorted(thumbs.items()))


class ImageStorage:
    """A store's files (or objects) and index, worked on off the reactor thread: Pillow and
    the writes by the worker pool, index lookups and records (with their ``stat`` or HEAD
    calls) by one index thread. Every method returns an awaitable; none blocks the reactor."""

    def __init__(self, store: LocalStore | ObjectStore, thumbs: dict[str, tuple[int, int]], max_pixels: int,
                 max_age: float, *, min_size: tuple[int, int] = (0, 0), file_names: str | None = None,
                 near_distance: int | None = None, skip_near: bool = False):
        self.backend = store
        self.thumbs = thumbs
        self.max_pixels = max_pixels
        self.max_age = max_age
        self.min_size = min_size
        self.file_names = file_names  # IMGCRAWL_FILE_NAME (a local store only); None: full/<sha1 of url>.<ext>
        self.near = (near_distance, skip_near)
        self.signature = thumbs_signature(thumbs)
        self.index_thread = BatchingThread("imgcrawl-index")
        # A bucket's objects are checked (HEAD, LIST) on threads of their own, many at once;
        # a directory's files on the index thread, with the index lookup that names them.
        self.checks = Threads(store.connections, "imgcrawl-s3") if store.connections else None
        self.workers: ProcessWorkers | ThreadWorkers | None = None
        self.stored: StoredImages | None = None

    def open(self, workers: ProcessWorkers | ThreadWorkers, index: SQLiteIndex | RedisIndex) -> None:
        self.workers = workers
        self.stored = StoredImages(index, self.backend.files, self.signature, self.max_age, *self.near)
        if self.file_names:
            self.index_thread.call(self._clear_staging)

    async def probe(self) -> None:
        """Check the store can be used (a bucket: one request), on the index thread."""
        await self._on_index_thread(self.backend.probe)

    async def close(self) -> None:
        if self.workers is not None:
            await maybe_deferred_to_future(self.workers.close())
        if self.checks is not None:
            await maybe_deferred_to_future(self.checks.stop())
        await maybe_deferred_to_future(
            self.index_thread.close(self.stored.index.close if self.stored is not None else None)
        )

    def _on_index_thread(self, fn, *args):
        return maybe_deferred_to_future(self.index_thread.call(fn, *args))

    def _on_files_thread(self, fn, *args):
        """Where the store's files are checked: a pool of threads for a bucket, else the index thread."""
        return maybe_deferred_to_future(self.checks.run(fn, *args)) if self.checks else self._on_index_thread(fn, *args)

    def _thumbs(self, thumb_paths: dict[str, str]) -> dict[str, tuple[tuple[int, int], str]]:
        return {n: (self.thumbs[n], self.backend.locate(p)) for n, p in thumb_paths.items()}

    def _run(self, job: str, *args):
        return maybe_deferred_to_future(self.workers.submit(job, *args))

    def _process(self, body: bytes, path: str, thumb_paths: dict[str, str]):
        """The worker job that checks a downloaded image and writes it and its thumbnails."""
        return self._run("process_image", body, self.backend.locate(path), self._thumbs(thumb_paths),
                         self.max_pixels, self.min_size, self.backend.writer)

    async def lookup(self, url: str, thumb_paths: dict[str, str], unrecorded: str | None = None) -> tuple[dict, str] | None:
        """``(record, how)`` for a fresh, complete stored image, None when it must be
        downloaded. ``how``: "uptodate"; "revalidate" when it is due again and is to be
        fetched only if it changed (its record has the validators); "rethumbed" when thumbnails made for other sizes
        were made again from the stored original; "adopted" when the original was found with
        no record at the ``unrecorded`` path, under any extension an original may have (where
        a crawl killed before recording it wrote it), and is recorded now, its thumbnails
        made from it."""
        # The alternatives differ only in their extension: inside the store if it is.
        candidates = imaging.with_each_extension(unrecorded) if unrecorded and self._inside(unrecorded) else []
        if self.checks is None:
            found = await self._on_index_thread(self.stored.lookup, url, candidates)
        else:
            recorded = await self._on_index_thread(self.stored.index.get, url)
            found = await self._on_files_thread(self.stored.check, recorded, candidates)
        if found is None:
            return None
        state, record = found
        if state in ("uptodate", "revalidate"):
            return record, state
        if self.file_names:
            thumb_paths = self._named_thumbs(record["path"], thumb_paths)
        facts = record.get("facts")  # an original in a bucket says what it is, and that its thumbnails are there
        if state == "adopt" and facts and await self._on_files_thread(self.backend.files.present, thumb_paths.values()):
            kept, _ = await self._on_index_thread(self.stored.keep, self._record(url, record["path"], thumb_paths, facts),
                                                  record["stored_at"])
            return kept, "adopted"
        # Else the thumbnails are made from the stored original, and its facts (sha256,
        # size) come from its own bytes, as after a download.
        try:
            facts = await self._run("rethumb", self.backend.locate(record["path"]), self._thumbs(thumb_paths),
                                    self.max_pixels, self.backend.writer)
        except Exception:
            if state == "rethumb":
                raise
            return None  # a leftover file we cannot take as is: download the image instead
        made = self._record(url, record["path"], thumb_paths, facts, {k: record[k] for k in CARRIED if k in record})
        if state == "rethumb":
            await self._on_index_thread(self.stored.index.put, url, made)
            return made, "rethumbed"
        kept, _ = await self._on_index_thread(self.stored.keep, made, record["stored_at"])
        return kept, "adopted"

    async def store(self, url: str, body: bytes, path: str, thumb_paths: dict[str, str], *,
                    validators: dict | None = None, fields: dict | None = None) -> tuple[dict, str]:
        """Check, store and record a downloaded image: ``(record, how)``, ``how`` as
        :meth:`StoredImages.keep` says. ``validators``: the response's ETag/Last-Modified;
        ``fields``: what IMGCRAWL_FILE_NAME names it by (``path``/``thumb_paths`` then unused)."""
        if self.file_names:
            return await self._store_named(url, body, fields or {}, validators)
        facts = await self._process(body, path, thumb_paths)
        record = self._record(url, path, thumb_paths, facts, validators)
        return await self._on_index_thread(self.stored.keep, record)

    async def refresh(self, url: str, record: dict, validators: dict) -> dict:
        """A stored image the server says is unchanged (304): fresh again for IMAGES_EXPIRES,
        with any new validators it sent."""
        fresh = {**record, **validators}
        await self._on_index_thread(self.stored.index.put, url, fresh)
        return fresh

    def _record(self, url: str, path: str, thumb_paths: dict[str, str], facts: dict, extra: dict | None = None) -> dict:
        return {
            "url": url, "path": path, "checksum": facts["sha256"],
            **{k: facts[k] for k in ("sha256", "format", "width", "height", "bytes", "phash")},
            "thumbs": {n: thumb_paths[n] for n in facts["thumbs"]}, "thumbs_signature": self.signature,
            **(extra or {}),
        }

    # -- IMGCRAWL_FILE_NAME ----------------------------------------------------------

    def _named_thumbs(self, path: str, thumb_paths: dict[str, str]) -> dict[str, str]:
        """The thumbnails of the original ``full/<name>``: ``thumbs/<size>/<name>.jpg``."""
        return {n: naming.thumb_path(path.removeprefix("full/"), n) for n in thumb_paths}

    async def _store_named(self, url: str, body: bytes, fields: dict, validators: dict | None) -> tuple[dict, str]:
        # The name may use the image's facts, known once a worker has decoded it: it writes
        # to staging names, and the index thread names the files (a rename each).
        token = os.urandom(8).hex()
        staged = f"{STAGING}/{token}.{imaging.file_extension(url, body)}"
        staged_thumbs = {n: f"{STAGING}/{token}-{n}.jpg" for n in self.thumbs}
        facts = await self._process(body, staged, staged_thumbs)
        return await self._on_index_thread(self._place, url, facts, fields, validators, staged, staged_thumbs)

    def _place(self, url, facts, fields, validators, staged, staged_thumbs) -> tuple[dict, str]:
        """On the index thread: the name the template gives (told apart from other URLs'
        names if need be, see :func:`naming.candidates`), the staged files moved there, the
        image recorded."""
        wanted = naming.render(self.file_names, {
            **fields, **{k: facts[k] for k in ("sha256", "width", "height")},
            "ext": imaging.extension_for(facts["format"]),
        })
        try:
            name = next((c for c in naming.candidates(wanted, url) if self.stored.index.claim(naming.claim_key(c), url)), None)
            if name is None:
                raise Failed("name-taken", f"full/{wanted} and the names that tell it apart are other images'")
            path = f"full/{name}"
            thumb_paths = self._named_thumbs(path, facts["thumbs"])
            root = self.backend.root
            for temp, final in [(staged, path), *((staged_thumbs[n], thumb_paths[n]) for n in thumb_paths)]:
                target = store_path(root, final)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(f"{root}/{temp}", target)
        finally:
            for temp in (staged, *staged_thumbs.values()):
                (self.backend.root / temp).unlink(missing_ok=True)
        return self.stored.keep(self._record(url, path, thumb_paths, facts, validators))

    def _clear_staging(self) -> None:
        """Remove what crawls killed mid-image left in staging (not what one running is using)."""
        try:
            entries = list(os.scandir(self.backend.root / STAGING))
        except OSError:
            return
        for entry in entries:
            try:
                if time.time() - entry.stat().st_mtime > STAGING_MAX_AGE:
                    os.unlink(entry.path)
            except OSError:
                pass

    def _inside(self, path: str) -> bool:
        try:
            self.backend.locate(path)
        except Failed:
            return False  # a download would be refused too, and says so then
        return True
