"""What a person watching a crawl sees: a progress display, a summary, a contact sheet.

* :class:`Progress` says what the crawl is about to do, then shows its progress: on a
  terminal one live display (:mod:`imgcrawl.live`), else one INFO line every
  ``IMGCRAWL_PROGRESS_INTERVAL`` seconds; the summary is the last line of the crawl. It
  leaves its counts and averages in the stats.
* :class:`ContactSheet` writes ``index.html`` in ``IMAGES_STORE`` (a directory or a bucket) at
  the end of a crawl, from the merged manifest (the whole collection), else from this crawl's
  items.

Both count from ``item_scraped``: the pipeline has set each item's ``status`` by then.
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import scrapy
from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.http.request import NO_CALLBACK
from scrapy.settings import SETTINGS_PRIORITIES
from scrapy.utils.asyncio import create_looping_call
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.threads import deferToThread

import imgcrawl
from imgcrawl import contact_sheet, exitstatus, live, progress, render, s3
from imgcrawl.failures import Failed, store_failure
from imgcrawl.manifest import LOST_STAT, fill_feed_uri, is_per_image
from imgcrawl.progress import MB
from imgcrawl.workerpool import BatchingThread

logger = logging.getLogger(__name__)

STORED = ("downloaded", "cached")
SKIPPED = ("uptodate",)
LIVE_REFRESH = 0.5  # seconds between redraws of the live display
LIVE_RATE_WINDOW = 10  # samples: its rates are over the last 5 s
WAITING_SHOWN = 3  # requests named in the live display


class Progress:
    """Counts pages and images; shows progress while the crawl runs, a summary at its end."""

    def __init__(self, crawler, interval: float, stalled_after: float, show_live: bool):
        self.crawler = crawler
        self.stats = crawler.stats
        self.interval = interval
        self.stalled_after = stalled_after
        self.counts = progress.Counts()
        self.inflight = progress.InFlight()
        self.display = live.LiveDisplay(self.title()) if show_live else None
        self.task = None
        self.started = time.monotonic()
        self.ended: tuple[str, float] | None = None  # (reason, seconds) once the spider closed

    @classmethod
    def from_crawler(cls, crawler):
        settings = crawler.settings
        o = cls(crawler, settings.getfloat("IMGCRAWL_PROGRESS_INTERVAL", 10.0),
                settings.getfloat("IMGCRAWL_STALLED_AFTER", 5.0), live.wanted(settings))
        for handler, signal in (
            (o.spider_opened, signals.spider_opened),
            (o.spider_closed, signals.spider_closed),
            (o.engine_stopped, signals.engine_stopped),
            (o.response_received, signals.response_received),
            (o.item_scraped, signals.item_scraped),
            (o.request_reached_downloader, signals.request_reached_downloader),
            (o.request_left_downloader, signals.request_left_downloader),
        ):
            crawler.signals.connect(handler, signal=signal)
        o.log_start()
        return o

    # -- what the crawl is about to do -------------------------------------------------

    def store(self) -> Path | str:
        """Where the images go: a directory, or a bucket's URI (without its last slash)."""
        store = self.crawler.settings.get("IMAGES_STORE") or "."
        return store.rstrip("/") if s3.is_s3(store) else Path(store).resolve()

    def title(self) -> str:
        return f"imgcrawl {self.crawler.spidercls.name} -> {self.store()}"

    def log_start(self) -> None:
        """A few INFO lines: versions, where the output goes, the crawl's key settings."""
        settings, spider = self.crawler.settings, self.crawler.spider
        urls = list(getattr(spider, "start_urls", None) or ())
        shown = ", ".join(urls[:3]) + (f" and {len(urls) - 3} more" if len(urls) > 3 else "")
        limits = [f"{n} {what}" for what in ("images", "pages") if (n := getattr(spider, f"max_{what}", None))]
        politeness = (
            f"{settings.getint('CONCURRENT_REQUESTS')} requests at once, "
            f"{settings.getint('CONCURRENT_REQUESTS_PER_DOMAIN')} per host, "
            f"{settings.getfloat('DOWNLOAD_TIMEOUT'):g} s timeout, "
            f"robots.txt {'obeyed' if settings.getbool('ROBOTSTXT_OBEY') else 'ignored'}"
        )
        lines = [
            f"imgcrawl {imgcrawl.__version__} (Scrapy {scrapy.__version__}, Python {platform.python_version()}): "
            f"spider {self.crawler.spidercls.name}, images to {self.store()}",
            f"Crawling {shown or '(no start URL given)'} | "
            f"{'at most ' + ', '.join(limits) if limits else 'no image or page limit'} | {politeness}",
        ]
        given = {name: value for name, value in settings.items()  # IMAGES_STORE is said above
                 if settings.getpriority(name) == SETTINGS_PRIORITIES["cmdline"] and name != "IMAGES_STORE"}
        if given:
            lines.append("Settings given: " + ", ".join(
                f"{name}={progress.redacted(name, value)}" for name, value in sorted(given.items())))
        for line in lines:
            logger.info(line)

    # -- counting ------------------------------------------------------------------------

    def spider_opened(self, spider) -> None:
        self.started = time.monotonic()
        if self.display is not None:
            self.display.start()
            self.rates = progress.Rates(LIVE_RATE_WINDOW)
            self.task = create_looping_call(self.refresh, spider)
            self.task.start(LIVE_REFRESH, now=True)
        elif self.interval > 0:  # 0 turns the line off; the summary stays
            self.rates = progress.Rates(2)  # the rates over the last interval
            self.rates.sample(self.started, 0, 0)
            self.task = create_looping_call(self.log_progress, spider)
            self.task.start(self.interval, now=False)

    def response_received(self, response, request, spider) -> None:
        # Image and robots.txt requests have no callback; pages do. A page that failed
        # (an HTTP error) is reported as a failure, not counted.
        if request.callback is not NO_CALLBACK and 200 <= response.status < 300:
            self.counts.pages += 1

    def request_reached_downloader(self, request, spider) -> None:
        self.inflight.add(request, request.url, time.monotonic())

    def request_left_downloader(self, request, spider) -> None:
        self.inflight.remove(request)

    def item_scraped(self, item, response, spider) -> None:
        adapter = ItemAdapter(item)
        status = adapter.get("status")
        counts = self.counts
        if adapter.get("near_duplicate_of"):
            counts.near_duplicates += 1
        if status == "skipped":  # a near-duplicate not stored (IMGCRAWL_SKIP_NEAR_DUPLICATES)
            counts.near_skipped += 1
        elif status in STORED:
            counts.stored += 1
            counts.bytes += adapter.get("bytes") or 0
        elif status in SKIPPED:
            counts.skipped += 1
        elif status == "failed":
            counts.failed += 1
            entry = counts.failures.setdefault(adapter.get("reason") or "unknown", [0, adapter.get("url")])
            entry[0] += 1

    # -- showing progress ----------------------------------------------------------------

    def queue_depth(self, spider) -> tuple[int, int]:
        """(pages waiting in the scheduler, images queued by the spider but not finished)."""
        scheduler = self.crawler.engine.scheduler if self.crawler.engine else None
        pages = len(scheduler) if scheduler is not None and hasattr(scheduler, "__len__") else 0
        done = self.counts.done
        return pages, max(0, getattr(spider, "images_queued", done) - done)

    def snapshot(self, spider, waiting_shown: int) -> progress.Snapshot:
        now = time.monotonic()
        elapsed = now - self.started
        counts = self.counts
        images_rate, mb_rate = self.rates.sample(now, counts.done, counts.bytes)
        pages_queued, images_queued = self.queue_depth(spider)
        limit = getattr(spider, "max_images", None)
        waiting, waiting_count = self.inflight.waiting(now, self.stalled_after, waiting_shown)
        return progress.Snapshot(
            counts, elapsed, images_rate, mb_rate, pages_queued, images_queued, limit,
            progress.eta(counts.done, limit, elapsed), self.stalled_after, waiting, waiting_count,
        )

    def log_progress(self, spider) -> None:
        logger.info(progress.progress_line(self.snapshot(spider, 1)), extra={"spider": spider})

    def refresh(self, spider) -> None:
        snapshot = self.snapshot(spider, WAITING_SHOWN)
        self.display.update(progress.display_lines(snapshot), progress.waiting_lines(snapshot))

    # -- the end -------------------------------------------------------------------------

    def spider_closed(self, spider, reason: str) -> None:
        if self.task is not None and self.task.running:
            self.task.stop()
        if self.display is not None:
            self.display.stop()
        elapsed = max(time.monotonic() - self.started, 1e-6)
        counts = self.counts
        for key, value in (
            (exitstatus.PAGES_STAT, counts.pages),
            ("imgcrawl/images_per_second", round(counts.done / elapsed, 2)),
            ("imgcrawl/mb_per_second", round(counts.bytes / MB / elapsed, 3)),
        ):
            self.stats.set_value(key, value)
        self.ended = (reason, elapsed)

    def engine_stopped(self) -> None:
        # After Scrapy's last lines of the crawl (and its stats dump): the summary is the last.
        if self.ended is not None:
            logger.info(self.summary(*self.ended))

    def summary(self, reason: str, elapsed: float) -> str:
        settings, counts = self.crawler.settings, self.counts
        store = self.store()
        lines = [
            f"Summary ({reason}): {counts.stored} images stored ({counts.bytes / MB:.1f} MB), "
            f"{counts.skipped} already stored, {counts.failed} failed, {counts.pages} pages "
            f"in {elapsed:.1f} s ({counts.done / elapsed:.1f} images/s)"
        ]
        lines += [
            f"  failed ({why}): {count}, e.g. {url}" for why, (count, url) in sorted(counts.failures.items())
        ]
        lines += self.recrawl_lines()
        hinted = self.stats.get_value(render.HINT_STAT, 0)
        if hinted:
            lines.append(f"  {hinted} page{'s' if hinted > 1 else ''} had no image in their HTML but scripts "
                         "that build them: crawl again with -a render=browser (docs/render.md)")
        lines.append(f"  originals: {store}/full  thumbnails: {store}/thumbs")
        feeds = [fill_feed_uri(uri, store, self.crawler.spidercls.name) or uri for uri in settings.getdict("FEEDS")]
        if feeds:
            lost = self.stats.get_value(LOST_STAT, 0)
            lines.append(f"  manifest: {', '.join(feeds)}" + (
                f" ({lost} lines not written: the next crawl writes them)" if lost else ""))
        status = exitstatus.exit_status(self.stats.get_stats())
        if status != exitstatus.OK:
            lines.append(f"  exit status {status}: {exitstatus.MEANINGS[status]}")
        return "\n".join(lines)


    def recrawl_lines(self) -> list[str]:
        """What conditional requests saved and the near-duplicates found, when there were any."""
        lines, counts = [], self.counts
        not_modified = self.stats.get_value("imgcrawl/not_modified", 0)
        if not_modified:
            saved = self.stats.get_value("imgcrawl/not_modified_bytes", 0)
            lines.append(f"  not modified (304): {not_modified} images, {saved / MB:.1f} MB not downloaded again")
        if counts.near_duplicates:
            lines.append(f"  near-duplicates: {counts.near_duplicates}" + (
                f" ({counts.near_skipped} not stored: IMGCRAWL_SKIP_NEAR_DUPLICATES)" if counts.near_skipped else ""))
        return lines


class ContactSheet:
    """Writes ``<IMAGES_STORE>/index.html`` at the end of a crawl.

    With a per-image manifest (the default ``FEEDS``), the sheet shows the whole collection:
    it is made from the merged manifest once the feed has merged it, on a thread, under the
    manifest's merge lock (a crawl sharing the store and merging after this one writes its
    sheet after this one's). Otherwise it shows this crawl's images and says so: their
    records are streamed to a temporary file as items pass (memory stays flat on long
    crawls), on one writer thread, and read back at the end. Into a bucket, the sheet is
    written to a temporary file and uploaded from there.
    """

    FILENAME = "index.html"
    WHOLE = "all crawls"
    THIS_CRAWL = "this crawl only (no per-image manifest in FEEDS)"

    def __init__(self, crawler, store: Path | s3.S3Objects):
        self.crawler = crawler
        self.bucket = store if isinstance(store, s3.S3Objects) else None
        self.path = f"{store.config.uri}{self.FILENAME}" if self.bucket else store / self.FILENAME
        self.writer: BatchingThread | None = None
        self.buffer = None  # the temporary file, used on the writer thread only
        self.records = 0
        self.write_error: BaseException | None = None
        self.written = False

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
        if any(is_per_image(options) for options in crawler.settings.getdict("FEEDS").values()):
            crawler.signals.connect(o.feed_slot_closed, signal=signals.feed_slot_closed)
        else:
            crawler.signals.connect(o.spider_opened, signal=signals.spider_opened)
            crawler.signals.connect(o.item_scraped, signal=signals.item_scraped)
            crawler.signals.connect(o.spider_closed, signal=signals.spider_closed)
        return o

    def title(self, spider) -> str:
        return f"{spider.name}: {self.crawler.settings.get('IMAGES_STORE')}"

    # -- from the merged manifest ----------------------------------------------------------

    async def feed_slot_closed(self, slot) -> None:
        storage = slot.storage
        if self.written or not getattr(storage, "merged", False):
            return  # another feed, or the merge failed (said by the feed): the old sheet stays
        self.written = True
        title = self.title(slot.spider)

        def write(lines) -> str:
            return self.save(_ManifestRecords(lines), title, self.WHOLE)

        await self._write(deferToThread(storage.read_merged, write), slot.spider)

    async def _write(self, d, spider) -> None:
        try:
            where = await maybe_deferred_to_future(d)
        except (OSError, Failed) as exc:  # e.g. the disk filled up: the images are stored, say so and go on
            self._not_written(exc, spider)
            return
        if self.write_error is not None:
            self._not_written(self.write_error, spider)
        elif where is not None:
            logger.info("Contact sheet: %s", where, extra={"spider": spider})

    def save(self, records, title: str, scope: str) -> str:
        """Write the sheet of ``records``; where it is, as a URI."""
        if self.bucket is None:
            return contact_sheet.write(records, self.path, title, scope).as_uri()
        with tempfile.TemporaryDirectory(prefix="imgcrawl-sheet-") as tmp:
            sheet = contact_sheet.write(records, Path(tmp) / self.FILENAME, title, scope)
            self.bucket.upload(self.FILENAME, sheet, s3.HTML)
        return self.path

    def _not_written(self, exc: BaseException, spider) -> None:
        failure = store_failure(exc) or (exc.reason if isinstance(exc, Failed) else None)
        if failure is not None and self.crawler.stats.get_value(f"imgcrawl/failed/{failure}"):
            # The pipeline said this very store failure once, at ERROR, with the fix: a
            # second ERROR would only repeat it.
            logger.info("Contact sheet not written (%s: %s); %s is left as it was",
                        failure, getattr(exc, "strerror", None) or exc, self.path, extra={"spider": spider})
        else:
            logger.error("Could not write the contact sheet %s: %s", self.path, exc, extra={"spider": spider})

    # -- from this crawl's items -----------------------------------------------------------

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
        # Nothing crawled (e.g. a bad argument): leave any old sheet alone.
        write = self.write if self.records else None
        title = self.title(spider)
        await self._write(self.writer.close(lambda: self._finish(write, title)), spider)

    def _finish(self, write, title: str) -> str | None:
        if self.buffer is None:
            return None
        with self.buffer:
            return write(title) if write is not None and self.write_error is None else None

    def write(self, title: str) -> str:
        return self.save(_BufferedRecords(self.buffer), title, self.THIS_CRAWL)


class _BufferedRecords:
    """The buffered records, read from the start each time they are iterated."""

    def __init__(self, lines):
        self.lines = lines

    def __iter__(self):
        self.lines.seek(0)
        return (json.loads(line) for line in self.lines)


class _ManifestRecords:
    """The sheet's records of manifest lines, read again each time they are iterated."""

    def __init__(self, lines):
        self.lines = lines

    def __iter__(self):
        return (contact_sheet.record_for(json.loads(line)) for line in self.lines)
