"""What a person watching a crawl sees: a progress line, a summary, a contact sheet.

* :class:`Progress` logs one INFO line every ``IMGCRAWL_PROGRESS_INTERVAL`` seconds and a
  summary when the spider closes, and leaves the averages in the stats.
* :class:`ContactSheet` writes ``index.html`` in ``IMAGES_STORE`` (a directory or a bucket)
  when the spider closes.

Both count from ``item_scraped``: the pipeline has set each item's ``status`` by then.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.http.request import NO_CALLBACK
from scrapy.utils.asyncio import create_looping_call
from scrapy.utils.defer import maybe_deferred_to_future

from imgcrawl import contact_sheet, s3
from imgcrawl.failures import Failed, store_failure
from imgcrawl.manifest import LOST_STAT, fill_feed_uri
from imgcrawl.workerpool import BatchingThread

logger = logging.getLogger(__name__)

STORED = ("downloaded", "cached")
SKIPPED = ("uptodate",)
MB = 1024 * 1024


class Progress:
    """Counts pages and images; logs a progress line every interval and a summary at close."""

    def __init__(self, crawler, interval: float):
        self.crawler = crawler
        self.stats = crawler.stats
        self.interval = interval
        self.pages = self.stored = self.skipped = self.failed = self.bytes = 0
        self.failures: dict[str, list] = {}  # reason -> [count, first URL]; bounded by reasons
        self.task = None

    @classmethod
    def from_crawler(cls, crawler):
        o = cls(crawler, crawler.settings.getfloat("IMGCRAWL_PROGRESS_INTERVAL", 10.0))
        crawler.signals.connect(o.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(o.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(o.response_received, signal=signals.response_received)
        crawler.signals.connect(o.item_scraped, signal=signals.item_scraped)
        return o

    def spider_opened(self, spider) -> None:
        self.started = self.last_time = time.monotonic()
        self.last_images = self.last_bytes = 0
        if self.interval > 0:  # 0 turns the line off; the summary stays
            self.task = create_looping_call(self.log_progress, spider)
            self.task.start(self.interval, now=False)

    def response_received(self, response, request, spider) -> None:
        # Image and robots.txt requests have no callback; pages do.
        if request.callback is not NO_CALLBACK:
            self.pages += 1

    def item_scraped(self, item, response, spider) -> None:
        adapter = ItemAdapter(item)
        status = adapter.get("status")
        if status in STORED:
            self.stored += 1
            self.bytes += adapter.get("bytes") or 0
        elif status in SKIPPED:
            self.skipped += 1
        elif status == "failed":
            self.failed += 1
            entry = self.failures.setdefault(adapter.get("reason") or "unknown", [0, adapter.get("url")])
            entry[0] += 1

    @property
    def done(self) -> int:
        return self.stored + self.skipped + self.failed

    def queue_depth(self, spider) -> tuple[int, int]:
        """(pages waiting in the scheduler, images queued by the spider but not finished)."""
        scheduler = self.crawler.engine.scheduler if self.crawler.engine else None
        pages = len(scheduler) if scheduler is not None and hasattr(scheduler, "__len__") else 0
        return pages, max(0, getattr(spider, "images_queued", self.done) - self.done)

    def eta(self, spider, now: float) -> str:
        limit = getattr(spider, "max_images", None)
        elapsed = now - self.started
        if not limit or not self.done or elapsed <= 0:
            return ""
        seconds = max(0, limit - self.done) / (self.done / elapsed)
        return f", ETA {timedelta(seconds=round(seconds))}"

    def log_progress(self, spider) -> None:
        now = time.monotonic()
        span = max(now - self.last_time, 1e-6)
        images_rate = (self.done - self.last_images) / span
        mb_rate = (self.bytes - self.last_bytes) / MB / span
        self.last_time, self.last_images, self.last_bytes = now, self.done, self.bytes
        pages_waiting, images_waiting = self.queue_depth(spider)
        logger.info(
            "Progress: %d pages, %d images stored, %d skipped, %d failed | "
            "%.1f images/s, %.2f MB/s | queue: %d pages, %d images%s",
            self.pages, self.stored, self.skipped, self.failed,
            images_rate, mb_rate, pages_waiting, images_waiting, self.eta(spider, now),
            extra={"spider": spider},
        )

    def spider_closed(self, spider, reason: str) -> None:
        if self.task is not None and self.task.running:
            self.task.stop()
        elapsed = max(time.monotonic() - self.started, 1e-6)
        for key, value in (
            ("pages", self.pages),
            ("images_per_second", round(self.done / elapsed, 2)),
            ("mb_per_second", round(self.bytes / MB / elapsed, 3)),
        ):
            self.stats.set_value(f"imgcrawl/{key}", value)
        logger.info(self.summary(spider, reason, elapsed), extra={"spider": spider})

    def summary(self, spider, reason: str, elapsed: float) -> str:
        settings = self.crawler.settings
        store = settings.get("IMAGES_STORE") or "."
        store = store.rstrip("/") if s3.is_s3(store) else Path(store).resolve()
        lines = [
            f"Summary ({reason}): {self.stored} images stored ({self.bytes / MB:.1f} MB), "
            f"{self.skipped} already stored, {self.failed} failed, {self.pages} pages "
            f"in {elapsed:.1f} s ({self.done / elapsed:.1f} images/s)"
        ]
        lines += [
            f"  failed ({why}): {count}, e.g. {url}" for why, (count, url) in sorted(self.failures.items())
        ]
        lines.append(f"  originals: {store}/full  thumbnails: {store}/thumbs")
        feeds = [fill_feed_uri(uri, store, spider.name) or uri for uri in settings.getdict("FEEDS")]
        if feeds:
            lost = self.stats.get_value(LOST_STAT, 0)
            lines.append(f"  manifest: {', '.join(feeds)}" + (
                f" ({lost} lines not written: the next crawl writes them)" if lost else ""))
        return "\n".join(lines)


class ContactSheet:
    """Writes ``<IMAGES_STORE>/index.html`` at spider close.

    The records are streamed to a temporary file as items pass (memory stays flat on long
    crawls) and read back once at the end. Every file operation runs on one writer thread,
    in order, never on the reactor thread; the records of the items that finished within a
    short window cross to it together. Into a bucket, the sheet is written to a temporary
    file and uploaded from there.
    """

    FILENAME = "index.html"

    def __init__(self, crawler, store: Path | s3.S3Objects):
        self.crawler = crawler
        self.bucket = store if isinstance(store, s3.S3Objects) else None
        self.path = f"{store.config.uri}{self.FILENAME}" if self.bucket else store / self.FILENAME
        self.writer: BatchingThread | None = None
        self.buffer = None  # the temporary file, used on the writer thread only
        self.records = 0
        self.write_error: BaseException | None = None

    @classmethod
    def from_crawler(cls, crawler):
        store = crawler.settings.get("IMAGES_STORE")
        if not store:
            raise NotConfigured("IMAGES_STORE is not set")
        if s3.is_s3(store):
            try:
                o = cls(crawler, s3.S3Objects(s3.config_from_settings(store, crawler.settings)))
            except ValueError:
                raise NotConfigured from None  # the pipeline refuses the setting, in one line
        else:
            o = cls(crawler, Path(store).resolve())
        crawler.signals.connect(o.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(o.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(o.spider_closed, signal=signals.spider_closed)
        return o

    def spider_opened(self, spider) -> None:
        self.writer = BatchingThread("imgcrawl-sheet")
        self._on_writer(self._open)

    def _on_writer(self, fn, *args):
        d = self.writer.call(fn, *args)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure) -> None:
        self.write_error = self.write_error or failure.value

    def _open(self) -> None:
        self.buffer = tempfile.TemporaryFile("w+", encoding="utf-8", prefix="imgcrawl-sheet-")

    def item_scraped(self, item, response, spider) -> None:
        # record_for reads a few fields: no need for asdict()'s deep copy of the whole item.
        self.records += 1
        self._on_writer(self._append, json.dumps(contact_sheet.record_for(ItemAdapter(item))) + "\n")

    def _append(self, line: str) -> None:
        if self.buffer is not None:
            self.buffer.write(line)

    async def spider_closed(self, spider, reason: str) -> None:
        if self.writer is None:
            return
        title = f"{spider.name}: {self.crawler.settings.get('IMAGES_STORE')}"
        # Nothing crawled (e.g. a bad argument): leave any old sheet alone.
        write = self.write if self.records else None
        try:
            where = await maybe_deferred_to_future(self.writer.close(lambda: self._finish(write, title)))
        except (OSError, Failed) as exc:  # e.g. the disk filled up: the images are stored, say so and go on
            self._not_written(exc, reason, spider)
            return
        if self.write_error is not None:
            self._not_written(self.write_error, reason, spider)
        elif where is not None:
            logger.info("Contact sheet: %s", where, extra={"spider": spider})

    def _not_written(self, exc: BaseException, reason: str, spider) -> None:
        failure = store_failure(exc) or (exc.reason if isinstance(exc, Failed) else None)
        if failure is not None and reason == failure.replace("-", "_"):
            # The crawl stopped because of this very store failure, and that was said
            # once, at ERROR, with the fix: a second ERROR would only repeat it.
            logger.info("Contact sheet not written (%s: %s); %s is left as it was",
                        failure, getattr(exc, "strerror", None) or exc, self.path, extra={"spider": spider})
        else:
            logger.error("Could not write the contact sheet %s: %s", self.path, exc, extra={"spider": spider})

    def _finish(self, write, title: str) -> str | None:
        if self.buffer is None:
            return None
        with self.buffer:
            return write(title) if write is not None and self.write_error is None else None

    def write(self, title: str) -> str:
        """Write the sheet; where it is, as a URI."""
        if self.bucket is None:
            return contact_sheet.write(_Records(self.buffer), self.path, title).as_uri()
        with tempfile.TemporaryDirectory(prefix="imgcrawl-sheet-") as tmp:
            sheet = contact_sheet.write(_Records(self.buffer), Path(tmp) / self.FILENAME, title)
            self.bucket.upload(self.FILENAME, sheet, s3.HTML)
        return self.path


class _Records:
    """The buffered records, read from the start each time they are iterated."""

    def __init__(self, lines):
        self.lines = lines

    def __iter__(self):
        self.lines.seek(0)
        return (json.loads(line) for line in self.lines)
