"""GalleryImagesPipeline: Scrapy's ImagesPipeline, made fast and faithful.

Glue only: Pillow work is in :mod:`imgcrawl.imaging`, the "already stored?" index in
:mod:`imgcrawl.index`. What differs from the stock pipeline, and why:

* the original bytes are stored unchanged, named by their real format (stock re-encodes
  everything to JPEG q75);
* decoding, thumbnails and file writes run in a worker pool, never on the reactor thread
  (stock blocks downloads while it runs Pillow);
* "already stored?" is an index lookup plus ``stat``, not a whole-file MD5;
* a failed image is logged once, with a reason, and counted (stock logs it twice, with a
  traceback) and the item records it;
* bodies waiting for processing are bounded (``IMGCRAWL_MAX_INFLIGHT``), and the per-crawl
  result cache is bounded, so memory stays flat however long the crawl.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any

from itemadapter import ItemAdapter
from scrapy import Request
from scrapy.exceptions import (
    CannotResolveHostError,
    CloseSpider,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadFailedError,
    DownloadTimeoutError,
    IgnoreRequest,
    NotConfigured,
    ResponseDataLossError,
)
from scrapy.http.request import NO_CALLBACK
from scrapy.pipelines.files import FSFilesStore
from scrapy.pipelines.images import ImagesPipeline
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.request import referer_str
from twisted.internet.defer import DeferredSemaphore

from imgcrawl import imaging
from imgcrawl.index import RedisIndex, SQLiteIndex
from imgcrawl.middlewares import BlockedRequest
from imgcrawl.workerpool import BatchingThread, ProcessWorkers, ThreadWorkers

# Scrapy logs any other media exception again at ERROR with a traceback; a failure we have
# already explained in one WARNING line is passed as a "filtered" one, which it keeps quiet.
from scrapy.pipelines.media import _MediaRequestFiltered  # isort: skip

logger = logging.getLogger(__name__)


class ImageFailed(_MediaRequestFiltered):
    """An image given up on; ``reason`` is the stat key suffix."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BadSetting(NotConfigured):
    """A setting value we cannot use; the message says which and shows a good one."""


def parse_thumbs(value: Any) -> dict[str, tuple[int, int]]:
    """``IMAGES_THUMBS`` from a dict or its JSON string (as ``-s`` and scrapyd pass it)."""
    example = 'e.g. -s IMAGES_THUMBS=\'{"small": [256, 256]}\''
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise BadSetting(f"IMAGES_THUMBS is not valid JSON: {value!r}; {example}") from None
    if not isinstance(value, dict):
        raise BadSetting(f"IMAGES_THUMBS must map names to [width, height]; {example}")
    thumbs = {}
    for name, size in value.items():
        try:
            width, height = (int(v) for v in size)
        except (TypeError, ValueError):
            width = height = 0
        safe_name = PurePosixPath(str(name)).name
        if width < 1 or height < 1 or safe_name != str(name) or name in ("", ".", ".."):
            raise BadSetting(f"IMAGES_THUMBS[{name!r}] = {size!r} is not a name and [width, height]; {example}")
        thumbs[str(name)] = (width, height)
    return thumbs


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
}


def store_failure(exc: BaseException) -> str | None:
    """``disk-full`` / ``store-not-writable`` when ``exc`` says so (errno, or SQLite's words)."""
    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text:
        return "disk-full"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "readonly database" in text:
        return "store-not-writable"
    return None


class _OncePerImage(logging.Filter):
    """Drops Scrapy's own warnings for an oversized or cut-off body: media_failed reports
    the same image with its reason (pages still get Scrapy's "Error downloading" line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return "download max size" not in message and not message.startswith("Got data loss")


class _RobotsTxtOneLine(logging.Filter):
    """Scrapy logs a robots.txt it could not fetch as an ERROR with a traceback, though the
    crawl goes on (the host then counts as allowing everything): one WARNING line says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, dict) else {}
        if str(record.msg).startswith("Error downloading") and isinstance(args.get("f_exception"), Exception):
            record.msg = "robots.txt of %s not fetched (%s): its URLs are crawled as allowed"
            record.args = (urlparse_cached(args["request"]).netloc, failure_reason(args["f_exception"]))
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def failure_reason(exc: BaseException) -> str:
    """A short, stable slug for why a download failed (used in stats and logs)."""
    if isinstance(exc, (ImageFailed, imaging.ImageError, BlockedRequest)):
        return exc.reason
    if isinstance(exc, (OSError, sqlite3.Error)) and (store_reason := store_failure(exc)):
        return store_reason
    if isinstance(exc, HttpError):
        return f"http-{exc.response.status}"
    if isinstance(exc, IgnoreRequest):
        message = str(exc).lower()
        if "robots" in message:
            return "robots"
        return "too-many-redirects" if "redirections" in message else "filtered"
    for cls, reason in (
        (DownloadTimeoutError, "timeout"),
        (DownloadCancelledError, "too-large"),
        (CannotResolveHostError, "dns"),
        (DownloadConnectionRefusedError, "connection-refused"),
        (ResponseDataLossError, "data-loss"),
        (DownloadFailedError, "connection-lost"),
    ):
        if isinstance(exc, cls):
            return reason
    return type(exc).__name__.lower()


# Longest file name most filesystems take (ext4, APFS, NTFS): longer fails on write.
NAME_MAX = 255


def report_failure(crawler, what: str, request, exc: BaseException) -> str:
    """The one WARNING line (what, reason, URL, referrer, detail) and the stat; the reason."""
    reason = failure_reason(exc)
    crawler.stats.inc_value(f"imgcrawl/failed/{reason}")
    if reason != "quota":  # said once when the quota was reached; the rest are only counted
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        logger.warning(
            "%s failed (%s): %s referred in <%s>: %s",
            what, reason, request.url, referer_str(request), detail.splitlines()[0][:300],
        )
    return reason


def store_path(root: Path, relative: str) -> str:
    """``root/relative`` as a string, refusing anything that would land outside ``root``."""
    if "\x00" in relative:
        raise ImageFailed("bad-path", f"NUL in path {relative!r}")
    if any(len(part.encode()) > NAME_MAX for part in relative.split("/")):
        raise ImageFailed("bad-path", f"a name in {relative[:80]!r}... is over {NAME_MAX} bytes")
    parent, _, name = relative.rpartition("/")
    if name in ("", ".", ".."):
        raise ImageFailed("bad-path", f"{relative!r} does not name a file")
    # Resolving costs a syscall per path component; the directories are few (full/,
    # thumbs/<name>/), so each is resolved once. A symlinked leaf is harmless: files are
    # written by rename, which replaces the link, never its target.
    directory = _resolved_inside(root, parent)
    if directory is None:
        raise ImageFailed("bad-path", f"{relative!r} is outside the image store")
    return f"{directory}/{name}"


@functools.lru_cache(maxsize=4096)
def _resolved_inside(root: Path, parent: str) -> str | None:
    directory = (root / parent).resolve()
    return str(directory) if directory.is_relative_to(root.resolve()) else None


def repair_jsonl(path: Path) -> bool:
    """Cut a half-written last line (a crawl killed mid-write), so that the lines a resumed
    crawl appends stay one JSON object each. True if something was cut."""
    if not path.is_file():
        return False
    with path.open("r+b") as f:
        end = pos = f.seek(0, os.SEEK_END)
        f.seek(max(0, end - 1))
        if end == 0 or f.read(1) == b"\n":
            return False
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                f.truncate(pos + newline + 1)
                return True
        f.truncate(0)
        return True


def fill_feed_uri(uri: str, images_store, name: str | None = None) -> str | None:
    """A FEEDS key with ``%(images_store)s`` (and ``%(name)s`` if given) filled in; None
    when it needs parameters only known during the crawl (``%(time)s`` ...)."""
    params = {"images_store": images_store, **({"name": name} if name else {})}
    try:
        return str(uri) % params
    except (KeyError, ValueError, TypeError):
        return None


def local_jsonl_feeds(settings) -> list[Path]:
    """The local JSON-lines feeds (the manifest) whose paths are known before the crawl."""
    paths = []
    for uri, options in settings.getdict("FEEDS").items():
        if (options or {}).get("format") not in ("jsonlines", "jl"):
            continue
        uri = fill_feed_uri(uri, settings.get("IMAGES_STORE"))
        if uri is None:
            continue  # depends on %(time)s etc.: a new file each crawl
        if "://" not in uri or uri.startswith("file://"):
            paths.append(Path(uri.removeprefix("file://")))
    return paths


# The per-image fields copied onto the item, so the manifest has one flat line per image.
RESULT_FIELDS = ("url", "status", "reason", "path", "sha256", "format", "width", "height", "bytes", "thumbs")


class _RecentResults(OrderedDict):
    """MediaPipeline's per-crawl result cache, bounded: the index remembers the rest."""

    def __init__(self, maxlen: int):
        super().__init__()
        self.maxlen = maxlen

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if len(self) > self.maxlen:
            self.popitem(last=False)


class LocalStore(FSFilesStore):
    """The stock local store, minus its traceback for a directory it cannot create:
    the pipeline's ``open_spider`` meets the same error and reports it in one line."""

    def _mkdir(self, dirname, domain=None) -> None:
        try:
            super()._mkdir(dirname, domain)
        except OSError:
            pass


class GalleryImagesPipeline(ImagesPipeline):
    LOG_FAILED_RESULTS = False  # media_failed already said it, once
    DEFAULT_IMAGES_RESULT_FIELD = "images"
    RECENT_RESULTS = 1024
    STORE_SCHEMES = {**ImagesPipeline.STORE_SCHEMES, "": LocalStore, "file": LocalStore}

    def __init__(self, store_uri, *, crawler):
        super().__init__(store_uri, crawler=crawler)
        settings = crawler.settings
        self.thumbs = parse_thumbs(settings.get("IMAGES_THUMBS", self.THUMBS))
        self.max_pixels = settings.getint("IMGCRAWL_MAX_PIXELS", imaging.DEFAULT_MAX_PIXELS)
        self.worker_count = settings.getint("IMGCRAWL_WORKERS", 0) or os.cpu_count() or 2
        pools = {"process": ProcessWorkers, "thread": ThreadWorkers}
        self.worker_pool = pools.get(settings.get("IMGCRAWL_WORKER_POOL", "process"))
        if self.worker_pool is None:
            raise BadSetting(
                f"IMGCRAWL_WORKER_POOL={settings.get('IMGCRAWL_WORKER_POOL')!r}: use 'process' "
                "or 'thread', e.g. -s IMGCRAWL_WORKER_POOL=thread"
            )
        self.workers: ProcessWorkers | ThreadWorkers | None = None
        max_inflight = settings.getint(
            # Below CONCURRENT_REQUESTS: the engine fetches no page while the downloader holds
            # that many requests, so images filling it would starve the crawl of new pages.
            "IMGCRAWL_MAX_INFLIGHT", settings.getint("CONCURRENT_REQUESTS") // 2
        )
        self.inflight = DeferredSemaphore(max(1, max_inflight))
        if not isinstance(self.store, FSFilesStore):
            # Workers write files directly (atomic rename); remote stores are not wired yet.
            raise BadSetting(f"IMAGES_STORE={store_uri!r}: imgcrawl stores to a local directory")
        self.local_root = Path(self.store.basedir).resolve()
        self.redis_url = settings.get("IMGCRAWL_REDIS_URL")
        self.index_path = settings.get("IMGCRAWL_INDEX") or self.local_root / ".imgcrawl" / "index.sqlite"
        self.index: SQLiteIndex | RedisIndex | None = None
        self.store_failed = False
        self.index_thread = BatchingThread("imgcrawl-index")
        self.thumbs_signature = json.dumps(sorted(self.thumbs.items()))
        self.max_images = settings.getint("IMGCRAWL_MAX_IMAGES", 0)
        self.max_bytes = settings.getint("IMGCRAWL_MAX_BYTES", 0)
        # Images and bytes stored or being stored: the quotas are never overshot by the
        # images still in flight when one is reached.
        self.reserved_images = self.reserved_bytes = 0
        self.quota_reason: str | None = None
        for feed in local_jsonl_feeds(settings):
            if repair_jsonl(feed):
                logger.warning("Cut a half-written last line from %s (an earlier crawl was killed)", feed)
        for name, one_line in (
            ("scrapy.core.downloader.handlers.http11", _OncePerImage),
            ("scrapy.downloadermiddlewares.robotstxt", _RobotsTxtOneLine),
        ):
            scrapy_logger = logging.getLogger(name)
            if not any(isinstance(f, one_line) for f in scrapy_logger.filters):
                scrapy_logger.addFilter(one_line())

    def open_spider(self, spider=None) -> None:
        super().open_spider()
        self.workers = self.worker_pool(self.worker_count)
        self.spiderinfo.downloaded = _RecentResults(self.RECENT_RESULTS)
        if self.redis_url:
            # Distributed: every worker must see what any worker has stored.
            self.index = RedisIndex(self.redis_url)
            return
        try:
            # Creates the store directory: the first write, so the place to learn it fails.
            self.index = SQLiteIndex(self.index_path)
        except (OSError, sqlite3.Error) as exc:
            reason = store_failure(exc) or "store-not-writable"
            self.report_store_failure(reason, exc)
            raise CloseSpider(reason.replace("-", "_")) from None

    def report_store_failure(self, reason: str, exc: BaseException) -> bool:
        """The one ERROR line for a store that cannot take more files (True the first time);
        later failures are only counted."""
        if self.store_failed:
            return False
        self.store_failed = True
        detail = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        logger.error("imgcrawl: %s", STORE_FAILURES[reason].format(root=self.local_root, detail=detail))
        return True

    async def close_spider(self, spider=None) -> None:
        if self.workers is not None:
            await maybe_deferred_to_future(self.workers.close())
        self.index_thread.close(self.index.close if self.index is not None else None)

    async def process_item(self, item, spider=None):
        # Back-pressure: media downloads skip CONCURRENT_REQUESTS, so bound them here.
        await maybe_deferred_to_future(self.inflight.acquire())
        try:
            return await super().process_item(item)
        finally:
            self.inflight.release()

    # -- Scrapy's hooks ---------------------------------------------------------------

    def get_media_requests(self, item, info):
        adapter = ItemAdapter(item)
        headers = {"Referer": adapter["page_url"]} if adapter.get("page_url") else {}
        return [
            # allow_offsite: images often live on a CDN host outside the crawled site.
            Request(u, callback=NO_CALLBACK, headers=headers, meta={"allow_offsite": True})
            for u in adapter.get(self.images_urls_field, [])
        ]

    def file_path(self, request, response=None, info=None, *, item=None) -> str:
        """``full/<sha1 of url>.<ext>``, the extension from the bytes when we have them."""
        guid = hashlib.sha1(request.url.encode()).hexdigest()  # noqa: S324 - a name, not security
        fmt = imaging.sniff_format(response.body[:512]) if response is not None else None
        if fmt:
            ext = imaging.extension_for(fmt)
        else:
            suffix = PurePosixPath(request.url.split("?", 1)[0]).suffix.lower().lstrip(".")
            ext = suffix if suffix in imaging.FORMAT_EXTENSIONS.values() else "img"
        return f"full/{guid}.{ext}"

    async def media_to_download(self, request, info, *, item=None):
        """Already stored, fresh and complete? Then no download: one lookup, a few stats."""
        if self.quota_reason:
            raise ImageFailed("quota", self.quota_reason)
        found = await maybe_deferred_to_future(self.index_thread.call(self.index.get, request.url))
        if not found:
            return None
        record, stored_at = found
        if time.time() - stored_at > self.expires * 86400:
            return None
        if not (self.local_root / record["path"]).exists():
            return None
        if record.get("thumbs_signature") != self.thumbs_signature:
            # IMAGES_THUMBS changed: new thumbnails from the stored original, no download.
            record = await self._rethumb(request, record)
        elif not all((self.local_root / p).exists() for p in record.get("thumbs", {}).values()):
            return None
        self.inc_stats("uptodate")
        return {**record, "status": "uptodate"}

    async def _rethumb(self, request, record: dict) -> dict:
        thumb_paths = {name: self.thumb_path(request, name) for name in self.thumbs}
        jobs = {n: (self.thumbs[n], store_path(self.local_root, p)) for n, p in thumb_paths.items()}
        original = store_path(self.local_root, record["path"])
        try:
            facts = await maybe_deferred_to_future(
                self.workers.submit("rethumb", original, jobs, self.max_pixels)
            )
        except imaging.ImageError as exc:
            raise ImageFailed(exc.reason, exc.detail) from None
        self.crawler.stats.inc_value("imgcrawl/rethumbed")
        record = {**record, "thumbs": {n: thumb_paths[n] for n in facts["thumbs"]},
                  "thumbs_signature": self.thumbs_signature}
        await maybe_deferred_to_future(self.index_thread.call(self.index.put, request.url, record))
        return record

    async def media_downloaded(self, response, request, info, *, item=None):
        if response.status != 200:
            raise ImageFailed(f"http-{response.status}")
        if not response.body:
            raise ImageFailed("empty", "zero bytes")
        path = self.file_path(request, response=response, info=info, item=item)
        thumb_paths = {
            name: self.thumb_path(request, name, response=response, info=info, item=item)
            for name in self.thumbs
        }
        self._reserve(len(response.body))
        try:
            facts = await self._process(response.body, path, thumb_paths)
        except BaseException:
            self.reserved_images -= 1
            self.reserved_bytes -= len(response.body)
            raise
        status = "cached" if "cached" in response.flags else "downloaded"
        self.inc_stats(status)
        stats = self.crawler.stats
        stats.inc_value("imgcrawl/stored")
        stats.inc_value("imgcrawl/stored_bytes", facts["bytes"])
        if self.max_images and stats.get_value("imgcrawl/stored") >= self.max_images:
            self._quota_reached(f"IMGCRAWL_MAX_IMAGES={self.max_images} images stored", "imgcrawl_max_images")
        record = {
            "url": request.url,
            "path": path,
            "checksum": facts["sha256"],
            "sha256": facts["sha256"],
            "format": facts["format"],
            "width": facts["width"],
            "height": facts["height"],
            "bytes": facts["bytes"],
            "thumbs": {n: thumb_paths[n] for n in facts["thumbs"]},
            "thumbs_signature": self.thumbs_signature,
        }
        kept = await maybe_deferred_to_future(self.index_thread.call(self._record_once, record))
        if kept["path"] != record["path"]:
            stats.inc_value("imgcrawl/duplicate_content")
        return {**kept, "status": status}

    def _record_once(self, record: dict) -> dict:
        """On the index thread: bytes already stored under another URL are kept once; this
        URL's record points at that copy and the files just written for it are removed."""
        holder = self.index.holder(record["sha256"])
        if holder and holder["url"] != record["url"] and holder.get("thumbs_signature") == self.thumbs_signature:
            kept = [holder["path"], *holder["thumbs"].values()]
            if all((self.local_root / p).exists() for p in kept):
                for p in {record["path"], *record["thumbs"].values()} - set(kept):
                    (self.local_root / p).unlink(missing_ok=True)
                record = {**record, "path": holder["path"], "thumbs": holder["thumbs"]}
        self.index.put(record["url"], record)
        return record

    def _reserve(self, size: int) -> None:
        """Count an image against the quotas before storing it, or refuse it."""
        if self.quota_reason:
            raise ImageFailed("quota", self.quota_reason)
        if self.max_bytes and self.reserved_bytes + size > self.max_bytes:
            self._quota_reached(f"IMGCRAWL_MAX_BYTES={self.max_bytes} bytes stored", "imgcrawl_max_bytes")
            raise ImageFailed("quota", self.quota_reason)
        if self.max_images and self.reserved_images >= self.max_images:
            raise ImageFailed("quota", f"IMGCRAWL_MAX_IMAGES={self.max_images} being stored")
        self.reserved_images += 1
        self.reserved_bytes += size

    def _quota_reached(self, what: str, close_reason: str) -> None:
        if self.quota_reason:
            return
        self.quota_reason = what
        logger.warning("Quota reached (%s): no more images; closing the crawl", what)
        deferred_from_coro(self.crawler.engine.close_spider_async(reason=close_reason))

    async def _process(self, body: bytes, path: str, thumb_paths: dict[str, str]) -> dict:
        original = store_path(self.local_root, path)
        jobs = {
            n: (self.thumbs[n], store_path(self.local_root, p))
            for n, p in thumb_paths.items()
        }
        try:
            return await maybe_deferred_to_future(
                self.workers.submit("process_image", body, original, jobs, self.max_pixels)
            )
        except imaging.ImageError as exc:
            raise ImageFailed(exc.reason, exc.detail) from None

    def media_failed(self, failure, request, info):
        exc = failure.value
        reason = failure_reason(exc)
        if reason in STORE_FAILURES:
            self.crawler.stats.inc_value(f"imgcrawl/failed/{reason}")
            # Every further image would fail the same way: stop, after saying so once.
            if self.report_store_failure(reason, exc):
                deferred_from_coro(self.crawler.engine.close_spider_async(reason=reason.replace("-", "_")))
            raise ImageFailed(reason, str(exc)) from None
        reason = report_failure(self.crawler, "Image", request, exc)
        raise ImageFailed(reason, getattr(exc, "detail", None) or str(exc)) from None

    def item_completed(self, results, item, info):
        """Each result on the item; the item's flat fields describe its (first) image."""
        adapter = ItemAdapter(item)
        urls = adapter.get(self.images_urls_field, [])
        images = []
        for url, (ok, value) in zip(urls, results):
            if ok:
                images.append({k: v for k, v in value.items() if k != "thumbs_signature"})
            else:
                exc = value.value
                images.append({"url": url, "status": "failed", "reason": failure_reason(exc)})
        adapter[self.images_result_field] = images
        if images:
            for field in RESULT_FIELDS:
                if field in images[0]:
                    adapter[field] = images[0][field]
        return item


def manifest_uri_params(params: dict, spider) -> dict:
    """Lets FEEDS say ``%(images_store)s/manifest.jsonl``: the manifest sits with the images."""
    return {**params, "images_store": spider.settings.get("IMAGES_STORE")}
