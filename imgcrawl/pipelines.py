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

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Any

from itemadapter import ItemAdapter
from scrapy import Request
from scrapy.exceptions import (
    CannotResolveHostError,
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
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.request import referer_str
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.python.failure import Failure

from imgcrawl import imaging
from imgcrawl.index import RedisIndex, SQLiteIndex

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


def failure_reason(exc: BaseException) -> str:
    """A short, stable slug for why a download failed (used in stats and logs)."""
    if isinstance(exc, (ImageFailed, imaging.ImageError)):
        return exc.reason
    if isinstance(exc, IgnoreRequest):
        return "robots" if "robots" in str(exc).lower() else "filtered"
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


def store_path(root: Path, relative: str) -> Path:
    """``root/relative``, refusing anything that would land outside ``root``."""
    if "\x00" in relative:
        raise ImageFailed("bad-path", f"NUL in path {relative!r}")
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ImageFailed("bad-path", f"{relative!r} is outside the image store")
    return target


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


def _run_in(executor: Executor, fn, *args) -> Deferred:
    """Submit to a thread or process pool; the Deferred fires back on the reactor thread."""
    d: Deferred = Deferred()

    def done(future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            reactor.callFromThread(d.errback, Failure(exc))
        else:
            reactor.callFromThread(d.callback, future.result())

    executor.submit(fn, *args).add_done_callback(done)
    return d


class GalleryImagesPipeline(ImagesPipeline):
    LOG_FAILED_RESULTS = False  # media_failed already said it, once
    DEFAULT_IMAGES_RESULT_FIELD = "images"
    RECENT_RESULTS = 1024

    def __init__(self, store_uri, *, crawler):
        super().__init__(store_uri, crawler=crawler)
        settings = crawler.settings
        self.thumbs = parse_thumbs(settings.get("IMAGES_THUMBS", self.THUMBS))
        self.max_pixels = settings.getint("IMGCRAWL_MAX_PIXELS", imaging.DEFAULT_MAX_PIXELS)
        workers = settings.getint("IMGCRAWL_WORKERS", 0) or os.cpu_count() or 2
        pool_kind = settings.get("IMGCRAWL_WORKER_POOL", "process")
        if pool_kind == "process":
            # spawn, not fork: forking a process that runs a reactor and threads is unsafe.
            self.workers: Executor = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        elif pool_kind == "thread":
            self.workers = ThreadPoolExecutor(workers, thread_name_prefix="imgcrawl-image")
        else:
            raise BadSetting(
                f"IMGCRAWL_WORKER_POOL={pool_kind!r}: use 'process' or 'thread', "
                "e.g. -s IMGCRAWL_WORKER_POOL=thread"
            )
        max_inflight = settings.getint(
            "IMGCRAWL_MAX_INFLIGHT", 2 * settings.getint("CONCURRENT_REQUESTS")
        )
        self.inflight = DeferredSemaphore(max(1, max_inflight))
        if not isinstance(self.store, FSFilesStore):
            # Workers write files directly (atomic rename); remote stores are not wired yet.
            raise BadSetting(f"IMAGES_STORE={store_uri!r}: imgcrawl stores to a local directory")
        self.local_root = Path(self.store.basedir).resolve()
        if settings.get("IMGCRAWL_REDIS_URL"):
            # Distributed: every worker must see what any worker has stored.
            self.index: SQLiteIndex | RedisIndex = RedisIndex(settings["IMGCRAWL_REDIS_URL"])
        else:
            index_path = settings.get("IMGCRAWL_INDEX") or self.local_root / ".imgcrawl" / "index.sqlite"
            self.index = SQLiteIndex(index_path)
        self.index_thread = ThreadPoolExecutor(1, thread_name_prefix="imgcrawl-index")
        self.thumbs_signature = json.dumps(sorted(self.thumbs.items()))

    def open_spider(self, spider=None) -> None:
        super().open_spider()
        self.spiderinfo.downloaded = _RecentResults(self.RECENT_RESULTS)

    def close_spider(self, spider=None) -> None:
        self.workers.shutdown(wait=True)
        self.index_thread.submit(self.index.close).result()
        self.index_thread.shutdown(wait=True)

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
        found = await maybe_deferred_to_future(_run_in(self.index_thread, self.index.get, request.url))
        if not found:
            return None
        record, stored_at = found
        if time.time() - stored_at > self.expires * 86400:
            return None
        if record.get("thumbs_signature") != self.thumbs_signature:
            return None
        paths = [record["path"], *record.get("thumbs", {}).values()]
        if not all((self.local_root / p).exists() for p in paths):
            return None
        self.inc_stats("uptodate")
        return {**record, "status": "uptodate"}

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
        facts = await self._process(response.body, path, thumb_paths)
        status = "cached" if "cached" in response.flags else "downloaded"
        self.inc_stats(status)
        stats = self.crawler.stats
        stats.inc_value("imgcrawl/stored")
        stats.inc_value("imgcrawl/stored_bytes", facts["bytes"])
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
        await maybe_deferred_to_future(_run_in(self.index_thread, self.index.put, request.url, record))
        return {**record, "status": status}

    async def _process(self, body: bytes, path: str, thumb_paths: dict[str, str]) -> dict:
        original = str(store_path(self.local_root, path))
        jobs = {
            n: (self.thumbs[n], str(store_path(self.local_root, p)))
            for n, p in thumb_paths.items()
        }
        try:
            return await maybe_deferred_to_future(
                _run_in(self.workers, imaging.process_image, body, original, jobs, self.max_pixels)
            )
        except imaging.ImageError as exc:
            raise ImageFailed(exc.reason, exc.detail) from None

    def media_failed(self, failure, request, info):
        exc = failure.value
        reason = failure_reason(exc)
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        logger.warning(
            "Image failed (%s): %s referred in <%s>: %s",
            reason, request.url, referer_str(request), detail.splitlines()[0][:300],
        )
        self.crawler.stats.inc_value(f"imgcrawl/failed/{reason}")
        raise ImageFailed(reason, detail) from None

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
