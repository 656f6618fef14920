"""Where stored bytes go: a local directory, the paths inside it, and the work of storing.

The image workers write the files themselves (atomic rename), so the pipeline's store is
only asked where its root is. :func:`store_path` is the one place a relative path from a
hook (``file_path``, ``thumb_path``) becomes a file name, and it refuses anything that
would land outside the store. :class:`ImageStorage` stores and looks up images without
blocking the reactor.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

from scrapy.utils.defer import maybe_deferred_to_future

from imgcrawl import imaging, naming
from imgcrawl.failures import Failed
from imgcrawl.index import VALIDATORS, RedisIndex, SQLiteIndex, StoredImages
from imgcrawl.workerpool import BatchingThread, ProcessWorkers, ThreadWorkers

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

    def __init__(self, uri: str):
        self.root = Path(str(uri).removeprefix("file://")).resolve()


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


class ImageStorage:
    """A local store's files and index, worked on off the reactor thread: Pillow and file
    writes by the worker pool, index lookups and records (with their ``stat`` calls) by
    one index thread. Every method returns an awaitable; none blocks the reactor."""

    def __init__(self, root: Path, thumbs: dict[str, tuple[int, int]], max_pixels: int, max_age: float, *,
                 file_names: str | None = None, near_distance: int | None = None, skip_near: bool = False):
        self.root = root
        self.thumbs = thumbs
        self.max_pixels = max_pixels
        self.max_age = max_age
        self.file_names = file_names  # IMGCRAWL_FILE_NAME; None: full/<sha1 of url>.<ext>
        self.near = (near_distance, skip_near)
        self.signature = json.dumps(sorted(thumbs.items()))  # which IMAGES_THUMBS made the thumbnails
        self.index_thread = BatchingThread("imgcrawl-index")
        self.workers: ProcessWorkers | ThreadWorkers | None = None
        self.stored: StoredImages | None = None

    def open(self, workers: ProcessWorkers | ThreadWorkers, index: SQLiteIndex | RedisIndex) -> None:
        self.workers = workers
        self.stored = StoredImages(index, self.root, self.signature, self.max_age, *self.near)
        if self.file_names:
            self.index_thread.call(self._clear_staging)

    async def close(self) -> None:
        if self.workers is not None:
            await maybe_deferred_to_future(self.workers.close())
        await maybe_deferred_to_future(
            self.index_thread.close(self.stored.index.close if self.stored is not None else None)
        )

    def _on_index_thread(self, fn, *args):
        return maybe_deferred_to_future(self.index_thread.call(fn, *args))

    def _run(self, job: str, original: str, thumb_paths: dict[str, str], *data):
        thumbs = {n: (self.thumbs[n], store_path(self.root, p)) for n, p in thumb_paths.items()}
        return maybe_deferred_to_future(self.workers.submit(job, *data, original, thumbs, self.max_pixels))

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
        found = await self._on_index_thread(self.stored.lookup, url, candidates)
        if found is None:
            return None
        state, record = found
        if state in ("uptodate", "revalidate"):
            return record, state
        if self.file_names:
            thumb_paths = self._named_thumbs(record["path"], thumb_paths)
        # Either way the thumbnails are made from the stored original, and its facts
        # (sha256, size) come from the file's own bytes, as after a download.
        try:
            facts = await self._run("rethumb", store_path(self.root, record["path"]), thumb_paths)
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
        facts = await self._run("process_image", store_path(self.root, path), thumb_paths, body)
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
        facts = await self._run("process_image", store_path(self.root, staged), staged_thumbs, body)
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
            for temp, final in [(staged, path), *((staged_thumbs[n], thumb_paths[n]) for n in thumb_paths)]:
                target = store_path(self.root, final)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(f"{self.root}/{temp}", target)
        finally:
            for temp in (staged, *staged_thumbs.values()):
                (self.root / temp).unlink(missing_ok=True)
        return self.stored.keep(self._record(url, path, thumb_paths, facts, validators))

    def _clear_staging(self) -> None:
        """Remove what crawls killed mid-image left in staging (not what one running is using)."""
        try:
            entries = list(os.scandir(self.root / STAGING))
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
            store_path(self.root, path)
        except Failed:
            return False  # a download would be refused too, and says so then
        return True
