"""GalleryImagesPipeline: Scrapy's ImagesPipeline, made fast and faithful.

Glue only: Pillow work is in :mod:`imgcrawl.imaging` (run by :mod:`imgcrawl.workerpool`),
"already stored?" in :mod:`imgcrawl.index`, paths in :mod:`imgcrawl.stores`, reasons in
:mod:`imgcrawl.failures`. What differs from the stock pipeline, and why:

* the original bytes are stored unchanged, named by their real format (stock re-encodes
  everything to JPEG q75);
* decoding, thumbnails and file writes run in a worker pool, never on the reactor thread
  (stock blocks downloads while it runs Pillow);
* "already stored?" is an index lookup plus ``stat``, not a whole-file MD5;
* a failed image is logged once, with a reason, and counted (stock logs it twice, with a
  traceback) and the item records it;
* images in flight are bounded in number (``IMGCRAWL_MAX_INFLIGHT``) and their bodies in
  bytes (``IMGCRAWL_MAX_INFLIGHT_BYTES``), and the per-crawl result cache is bounded, so
  memory stays flat however long the crawl and however large the images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from pathlib import PurePosixPath
from typing import Any

from itemadapter import ItemAdapter
from scrapy import Request
from scrapy.exceptions import CloseSpider, NotConfigured
from scrapy.http.request import NO_CALLBACK
from scrapy.pipelines.images import ImagesPipeline
from scrapy.utils.datatypes import LocalCache
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.defer import DeferredSemaphore
from twisted.python.failure import Failure

from imgcrawl import compat, conditional, imaging, naming
from imgcrawl.failures import (
    STORE_FAILURES, Failed, StoreFailures, failure_reason, forget_frames, report_failure, store_failure,
)
from imgcrawl.inflight import DEFAULT_MAX_INFLIGHT_BYTES, InflightBytes, holding, release
from imgcrawl.index import RedisIndex, SQLiteIndex
from imgcrawl.quotas import Quotas
from imgcrawl.stores import ImageStorage, LocalStore, ObjectStore, StoreSchemes, thumbs_signature
from imgcrawl.workerpool import ProcessWorkers, ThreadWorkers

logger = logging.getLogger(__name__)


class ImageFailed(Failed, compat.MediaRequestFiltered):
    """An image given up on and already reported: Scrapy's media pipeline logs it no more."""


class BadSetting(NotConfigured):
    """A setting value we cannot use; the message says which and shows a good one."""


class RefusedPipeline:
    """Stands in for the pipeline when a setting cannot be used: the crawl stops as it
    opens, with one ERROR line and the finish reason ``bad_setting``. Scrapy's way (a
    WARNING "Disabled ..." and the crawl going on without the pipeline) would store
    nothing and still exit 0."""

    def __init__(self, message: str):
        self.message = message

    def open_spider(self, spider=None) -> None:
        logger.error("imgcrawl: %s", self.message)
        raise CloseSpider("bad_setting")

    def process_item(self, item, spider=None):
        return item


# The settings Scrapy's media pipelines also read under a pipeline's own name (a subclass
# MyPipeline reads MYPIPELINE_IMAGES_THUMBS before IMAGES_THUMBS); the FILES_ ones are
# overridden by their IMAGES_ counterparts in an images pipeline.
PER_CLASS_SETTINGS = (
    "IMAGES_THUMBS", "IMAGES_EXPIRES", "IMAGES_MIN_WIDTH", "IMAGES_MIN_HEIGHT",
    "IMAGES_URLS_FIELD", "IMAGES_RESULT_FIELD", "MEDIA_ALLOW_REDIRECTS",
)


def refuse_unread_per_class_settings(class_name: str, settings) -> None:
    """A setting under the pipeline's own name that no pipeline reads so (say
    MYPIPELINE_IMAGES_STORE) is refused, not ignored."""
    prefix = f"{class_name.upper()}_"
    for name in settings:
        setting = name.removeprefix(prefix)
        if name.startswith(prefix) and setting.startswith(("IMAGES_", "FILES_", "MEDIA_", "IMGCRAWL_")) \
                and setting not in PER_CLASS_SETTINGS:
            raise BadSetting(
                f"{name}: no pipeline reads {setting} under its own name; set {setting} (per-pipeline "
                f"names work for {', '.join(PER_CLASS_SETTINGS)})"
            )


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


def worker_pool(name: str) -> type[ProcessWorkers | ThreadWorkers]:
    """The pool class ``IMGCRAWL_WORKER_POOL`` names."""
    pools = {"process": ProcessWorkers, "thread": ThreadWorkers}
    if name not in pools:
        raise BadSetting(f"IMGCRAWL_WORKER_POOL={name!r}: use 'process' or 'thread', e.g. -s IMGCRAWL_WORKER_POOL=thread")
    return pools[name]


def image_results(urls: list[str], results: list) -> list[dict]:
    """Scrapy's ``(ok, result or failure)`` per URL as the item's records: a stored image's
    record, or the URL with ``status: failed`` and its reason."""
    return [
        {k: v for k, v in value.items() if k != "thumbs_signature"} if ok
        else {"url": url, "status": "failed", "reason": failure_reason(value.value)}
        for url, (ok, value) in zip(urls, results)
    ]


# The per-image fields copied onto the item, so the manifest has one flat line per image.
RESULT_FIELDS = (
    "url", "status", "reason", "path", "sha256", "format", "width", "height", "bytes", "thumbs",
    "phash", "near_duplicate_of",
)
# request.meta key: the stored record a conditional request asks about.
REVALIDATING = "imgcrawl_revalidating"


def file_name_template(value: Any) -> str | None:
    """``IMGCRAWL_FILE_NAME``, checked; None (empty) keeps ``full/<sha1 of url>.<ext>``."""
    if not value:
        return None
    try:
        return naming.check_template(str(value))
    except naming.TemplateError as exc:
        raise BadSetting(str(exc)) from None


def near_distance(value: Any) -> int | None:
    """``IMGCRAWL_NEAR_DUPLICATE_DISTANCE``: bits (0-63), or -1 to not look for near-duplicates."""
    try:
        distance = int(value)
    except (TypeError, ValueError):
        distance = -2
    if not -1 <= distance < 64:
        raise BadSetting(f"IMGCRAWL_NEAR_DUPLICATE_DISTANCE={value!r}: bits 0 to 63, or -1 for none; "
                         "e.g. -s IMGCRAWL_NEAR_DUPLICATE_DISTANCE=10")
    return None if distance < 0 else distance


def default_max_inflight(concurrent_requests: int, per_host: int) -> int:
    """``IMGCRAWL_MAX_INFLIGHT`` when not set: four images per connection to a host, so each
    connection has the next image waiting while others' are being stored; and at most three
    quarters of ``CONCURRENT_REQUESTS``, because the engine fetches no page while the
    downloader holds that many requests: images filling it would starve the crawl of pages."""
    return min(4 * per_host, concurrent_requests * 3 // 4)


class GalleryImagesPipeline(ImagesPipeline):
    LOG_FAILED_RESULTS = False  # media_failed already said it, once
    DEFAULT_IMAGES_RESULT_FIELD = "images"
    RECENT_RESULTS = 1024  # Scrapy's per-crawl result cache, bounded: the index has the rest
    # The workers write into the store themselves: a local directory or an S3 bucket.
    STORE_SCHEMES = StoreSchemes({"": LocalStore, "file": LocalStore, "s3": ObjectStore})

    @classmethod
    def from_crawler(cls, crawler):
        # Not Scrapy's, which copies the AWS settings onto its store classes: ours read them
        # from the settings. A setting we cannot use stops the crawl (RefusedPipeline).
        try:
            return cls(crawler.settings["IMAGES_STORE"], crawler=crawler)
        except NotConfigured as exc:
            return RefusedPipeline(str(exc))

    def __init__(self, store_uri, *, crawler):
        try:
            super().__init__(store_uri, crawler=crawler)
        except ValueError as exc:  # an IMAGES_STORE no store takes
            raise BadSetting(str(exc)) from None
        settings = crawler.settings
        refuse_unread_per_class_settings(type(self).__name__, settings)
        # Scrapy's own reading of IMAGES_THUMBS (and IMAGES_MIN_*, IMAGES_EXPIRES), which
        # honours the per-pipeline names; -s and scrapyd give JSON strings.
        self.thumbs = parse_thumbs(self.thumbs)
        self.file_names = file_name_template(settings.get("IMGCRAWL_FILE_NAME"))
        if self.file_names and not isinstance(self.store, LocalStore):
            # Such a name is given once the worker has decoded the image, by renaming the
            # files it wrote: a bucket has no rename.
            raise BadSetting(f"IMGCRAWL_FILE_NAME needs IMAGES_STORE to be a local directory, not {store_uri}")
        try:
            self.store.configure(settings, thumbs_signature(self.thumbs))
        except ImportError:
            raise BadSetting(f"IMAGES_STORE={store_uri}: an S3 store needs botocore: pip install 'imgcrawl[s3]'") from None
        except ValueError as exc:
            raise BadSetting(str(exc)) from None
        self.skip_near_duplicates = settings.getbool("IMGCRAWL_SKIP_NEAR_DUPLICATES")
        self.storage = ImageStorage(
            self.store, self.thumbs, settings.getint("IMGCRAWL_MAX_PIXELS", imaging.DEFAULT_MAX_PIXELS),
            max_age=self.expires * 86400, min_size=(self.min_width, self.min_height), file_names=self.file_names,
            near_distance=near_distance(settings.get("IMGCRAWL_NEAR_DUPLICATE_DISTANCE", -1)),
            skip_near=self.skip_near_duplicates,
        )
        self.worker_count = settings.getint("IMGCRAWL_WORKERS", 0) or os.cpu_count() or 2
        self.worker_pool = worker_pool(settings.get("IMGCRAWL_WORKER_POOL", "process"))
        max_inflight = settings.getint("IMGCRAWL_MAX_INFLIGHT", default_max_inflight(
            settings.getint("CONCURRENT_REQUESTS"), settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN")))
        self.inflight = DeferredSemaphore(max(1, max_inflight))
        self.inflight_bytes = InflightBytes(settings.getint("IMGCRAWL_MAX_INFLIGHT_BYTES", DEFAULT_MAX_INFLIGHT_BYTES))
        self.redis_url = settings.get("IMGCRAWL_REDIS_URL")
        # A bucket's index is not kept in the bucket (S3 has no SQLite): by default it is in
        # the user's cache directory, one per store (or in Redis, when distributed).
        self.index_path = settings.get("IMGCRAWL_INDEX") or self.store.default_index()
        self.quotas = Quotas(
            settings.getint("IMGCRAWL_MAX_IMAGES", 0), settings.getint("IMGCRAWL_MAX_BYTES", 0), self._quota_reached
        )
        self.store_failures = StoreFailures.of(crawler, self.store)

    async def open_spider(self, spider=None) -> None:
        super().open_spider()
        compat.set_media_result_cache(self, LocalCache(self.RECENT_RESULTS))
        try:
            # A bucket that cannot be used (credentials, no such bucket, no answer) is said
            # before the crawl fetches anything.
            await self.storage.probe()
        except Failed as exc:
            self._refuse_store(exc.reason, exc)
        try:
            # Distributed: every worker must see what any worker has stored. Locally the
            # index creates the store directory: the first write, so the place to learn it fails.
            index = RedisIndex(self.redis_url) if self.redis_url else SQLiteIndex(self.index_path)
        except (OSError, sqlite3.Error) as exc:
            reason = store_failure(exc) or "store-not-writable"
            self._refuse_store(reason, exc, self.store.index_failure(self.index_path, exc))
        workers = self.worker_pool(self.worker_count)
        if isinstance(workers, ProcessWorkers):
            workers.on_broken = lambda detail: self._close("worker_broken")
        self.storage.open(workers, index)

    def _refuse_store(self, reason: str, exc: BaseException, message: str | None = None):
        self.store_failures.report(reason, exc, message)
        raise CloseSpider(reason.replace("-", "_")) from None

    async def close_spider(self, spider=None) -> None:
        await self.storage.close()

    async def process_item(self, item, spider=None):
        # Back-pressure: media downloads skip CONCURRENT_REQUESTS, so bound them here.
        await maybe_deferred_to_future(self.inflight.acquire())
        try:
            return await super().process_item(item)
        finally:
            self.inflight.release()
            self.inflight_bytes.release_item(item)

    def _close(self, reason: str) -> None:
        deferred_from_coro(self.crawler.engine.close_spider_async(reason=reason))

    def _quota_reached(self, what: str, close_reason: str) -> None:
        logger.warning("Quota reached (%s): no more images; closing the crawl", what)
        self._close(close_reason)

    def _thumb_paths(self, request, response=None, info=None, item=None) -> dict[str, str]:
        return {name: self.thumb_path(request, name, response=response, info=info, item=item) for name in self.thumbs}

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
        return f"full/{guid}.{imaging.file_extension(request.url, response.body if response else None)}"

    async def media_to_download(self, request, info, *, item=None):
        """Already stored, fresh and complete? Then no download: one lookup, a few stats."""
        try:
            self.quotas.check()
            # Where an earlier download may be stored without its index record (a crawl killed
            # between the file's rename and the index commit): the path file_path gives
            # without the bytes (under each extension it could give them).
            found = await self.storage.lookup(
                request.url, self._thumb_paths(request, item=item),
                None if self.file_names else self.file_path(request, info=info, item=item),
            )
        except Failed:
            # Scrapy sends only download failures to media_failed; this one is ours to report.
            self.media_failed(Failure(), request, info)
        if found is None:
            # To be downloaded: its body will count against the byte budget, and while the
            # budget is full it does not start.
            await self.inflight_bytes.share(request, item).room()
            return None
        record, how = found
        if how == "revalidate":
            # Due again: fetched only if it changed (a 304 otherwise, see _not_modified).
            request.headers.update(conditional.request_headers(record))
            request.meta[REVALIDATING] = record
            await self.inflight_bytes.share(request, item).room()
            return None
        if how != "uptodate":
            self.crawler.stats.inc_value(f"imgcrawl/{how}")  # rethumbed, adopted
        self.inc_stats("uptodate")
        return {**record, "status": "uptodate"}

    async def media_downloaded(self, response, request, info, *, item=None):
        with holding(request, response):  # its body counts against the byte budget until stored
            return await self._store_downloaded(response, request, info, item)

    async def _store_downloaded(self, response, request, info, item):
        if response.status == 304:
            return await self._not_modified(response, request)
        if response.status != 200:
            raise Failed(f"http-{response.status}")
        if not response.body:
            raise Failed("empty", "zero bytes")
        path = self.file_path(request, response=response, info=info, item=item)
        size = len(response.body)
        self.quotas.admit(size)
        try:
            thumb_paths = self._thumb_paths(request, response, info, item)
            record, how = await self.storage.store(
                request.url, response.body, path, thumb_paths, validators=conditional.validators(response.headers),
                fields=self.name_fields(request, response, item) if self.file_names else None,
            )
        except BaseException:
            self.quotas.release(size)
            raise
        stats = self.crawler.stats
        if record.get("near_duplicate_of"):
            stats.inc_value("imgcrawl/near_duplicates")
        if how == "near-duplicate":
            # IMGCRAWL_SKIP_NEAR_DUPLICATES: not stored; its record names the earlier image's files.
            self.quotas.release(size)
            self.inc_stats("skipped")
            return {**record, "status": "skipped", "reason": "near-duplicate"}
        status = "cached" if "cached" in response.flags else "downloaded"
        self.inc_stats(status)
        stats.inc_value("imgcrawl/stored")
        stats.inc_value("imgcrawl/stored_bytes", record["bytes"])
        if how == "duplicate":
            stats.inc_value("imgcrawl/duplicate_content")
        self.quotas.record_stored()
        return {**record, "status": status}

    async def _not_modified(self, response, request):
        """A 304: the stored image is still the server's, nothing was downloaded."""
        record = request.meta.get(REVALIDATING)
        conditional.check_not_modified(record is not None and conditional.is_conditional(request.headers),
                                       response.body)
        record = await self.storage.refresh(request.url, record, conditional.validators(response.headers))
        stats = self.crawler.stats
        stats.inc_value("imgcrawl/not_modified")
        stats.inc_value("imgcrawl/not_modified_bytes", record["bytes"])  # what it did not download again
        self.inc_stats("uptodate")
        return {**record, "status": "uptodate"}

    def name_fields(self, request, response, item) -> dict:
        """The fields IMGCRAWL_FILE_NAME may use that the page and the response give (the
        image's own facts are added once it is decoded). A hook: override to add or change."""
        adapter = ItemAdapter(item) if item is not None else {}
        last_modified = response.headers.get(b"Last-Modified")
        return naming.page_fields(
            request.url, adapter.get("page_url"), adapter.get("page_title"), adapter.get("position"),
            adapter.get("alt") or adapter.get("title"), last_modified.decode("latin-1") if last_modified else None,
        )

    def media_failed(self, failure, request, info):
        release(request)
        exc = failure.value
        # Scrapy caches the failure for the crawl (its result cache, RECENT_RESULTS long),
        # and the ImageFailed raised below keeps ``exc`` as its __context__: the frames in
        # their tracebacks (in reference cycles, which only a full garbage collection
        # frees) would keep this image's body alive with it.
        forget_frames(failure)
        reason = failure_reason(exc)
        if reason in STORE_FAILURES:
            self.crawler.stats.inc_value(f"imgcrawl/failed/{reason}")
            if self.store_failures.report(reason, exc):
                # Every further image would fail the same way: stop, after saying so once.
                self._close(reason.replace("-", "_"))
            raise ImageFailed(reason, str(exc)) from None
        reason = report_failure(self.crawler, "Image", request, exc)
        raise ImageFailed(reason, getattr(exc, "detail", None) or str(exc)) from None

    def item_completed(self, results, item, info):
        """Each result on the item; the item's flat fields describe its (first) image."""
        adapter = ItemAdapter(item)
        adapter[self.images_result_field] = images = image_results(adapter.get(self.images_urls_field, []), results)
        for field in RESULT_FIELDS if images else ():
            if field in images[0]:
                adapter[field] = images[0][field]
        return item
