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
from pathlib import Path

from scrapy.utils.defer import maybe_deferred_to_future

from imgcrawl import imaging
from imgcrawl.failures import Failed
from imgcrawl.index import RedisIndex, SQLiteIndex, StoredImages
from imgcrawl.workerpool import BatchingThread, ProcessWorkers, ThreadWorkers

# Longest file name most filesystems take (ext4, APFS, NTFS): longer fails on write.
NAME_MAX = 255


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

    def __init__(self, root: Path, thumbs: dict[str, tuple[int, int]], max_pixels: int, max_age: float):
        self.root = root
        self.thumbs = thumbs
        self.max_pixels = max_pixels
        self.max_age = max_age
        self.signature = json.dumps(sorted(thumbs.items()))  # which IMAGES_THUMBS made the thumbnails
        self.index_thread = BatchingThread("imgcrawl-index")
        self.workers: ProcessWorkers | ThreadWorkers | None = None
        self.stored: StoredImages | None = None

    def open(self, workers: ProcessWorkers | ThreadWorkers, index: SQLiteIndex | RedisIndex) -> None:
        self.workers = workers
        self.stored = StoredImages(index, self.root, self.signature, self.max_age)

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
        downloaded. ``how``: "uptodate"; "rethumbed" when thumbnails made for other sizes
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
        if state == "uptodate":
            return record, "uptodate"
        # Either way the thumbnails are made from the stored original, and its facts
        # (sha256, size) come from the file's own bytes, as after a download.
        try:
            facts = await self._run("rethumb", store_path(self.root, record["path"]), thumb_paths)
        except Exception:
            if state == "rethumb":
                raise
            return None  # a leftover file we cannot take as is: download the image instead
        made = self._record(url, record["path"], thumb_paths, facts)
        if state == "rethumb":
            await self._on_index_thread(self.stored.index.put, url, made)
            return made, "rethumbed"
        return await self._on_index_thread(self.stored.keep, made, record["stored_at"]), "adopted"

    async def store(self, url: str, body: bytes, path: str, thumb_paths: dict[str, str]) -> tuple[dict, bool]:
        """Check, store and record a downloaded image: ``(record, duplicate)``, where
        ``duplicate`` means its bytes were already stored under another URL and are kept once."""
        facts = await self._run("process_image", store_path(self.root, path), thumb_paths, body)
        record = self._record(url, path, thumb_paths, facts)
        kept = await self._on_index_thread(self.stored.keep, record)
        return kept, kept["path"] != record["path"]

    def _record(self, url: str, path: str, thumb_paths: dict[str, str], facts: dict) -> dict:
        return {
            "url": url, "path": path, "checksum": facts["sha256"],
            **{k: facts[k] for k in ("sha256", "format", "width", "height", "bytes")},
            "thumbs": {n: thumb_paths[n] for n in facts["thumbs"]}, "thumbs_signature": self.signature,
        }

    def _inside(self, path: str) -> bool:
        try:
            store_path(self.root, path)
        except Failed:
            return False  # a download would be refused too, and says so then
        return True
