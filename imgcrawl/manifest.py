"""The manifest: one JSON line per image (``FEEDS``), or CSV with ``-o images.csv``.

* :func:`manifest_uri_params` (``FEED_URI_PARAMS``) lets a feed URI say
  ``%(images_store)s/manifest.jsonl``, so the manifest sits with the images.
* :class:`RepairManifest` (an extension) cuts a half-written last line left by a killed
  crawl before the feed exporter appends to the file.
* :class:`ManifestCsvItemExporter` (``FEED_EXPORTERS["csv"]``) writes ``thumbs`` as JSON and
  quotes cells a spreadsheet would run as a formula.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from scrapy.exporters import CsvItemExporter

from imgcrawl.failures import store_failure

logger = logging.getLogger(__name__)


def fill_feed_uri(uri: str, images_store, name: str | None = None) -> str | None:
    """A FEEDS key with ``%(images_store)s`` (and ``%(name)s`` if given) filled in; None
    when it needs parameters only known during the crawl (``%(time)s`` ...)."""
    params = {"images_store": images_store, **({"name": name} if name else {})}
    try:
        return str(uri) % params
    except (KeyError, ValueError, TypeError):
        return None


def manifest_uri_params(params: dict, spider) -> dict:
    return {**params, "images_store": spider.settings.get("IMAGES_STORE")}


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


class RepairManifest:
    """Built with the crawler, before the feed exporter opens its files at spider open."""

    @classmethod
    def from_crawler(cls, crawler):
        for feed in local_jsonl_feeds(crawler.settings):
            try:
                cut = repair_jsonl(feed)
            except OSError as exc:
                # Built before the crawl starts: an exception here would end it with a
                # CRITICAL traceback and no finish reason. A store we cannot write to (or a
                # full one) is reported once, with the fix, by whatever writes to it first
                # (the pipeline's open_spider, or the manifest itself): nothing more to say.
                if store_failure(exc) is None:
                    logger.warning("Could not check %s for a half-written last line: %s", feed, exc)
                else:
                    logger.debug("Manifest %s left as it is: %s", feed, exc)
                continue
            if cut:
                logger.warning("Cut a half-written last line from %s (an earlier crawl was killed)", feed)
        return cls()


# A spreadsheet reads a cell starting with one of these as a formula (or, for tab and CR,
# may strip them and then read one): alt texts, titles and URLs come from the crawled site.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str) -> str:
    """OWASP's CSV-injection defence: a cell that would start a formula gets a leading
    single quote, which spreadsheets read as "this is text" and do not show."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


class ManifestCsvItemExporter(CsvItemExporter):
    """Scrapy's CSV exporter, for people opening the file in a spreadsheet: ``thumbs`` as JSON
    (not a Python repr) and every text cell safe from formula injection. The JSON-lines
    manifest keeps the values exactly as found."""

    def serialize_field(self, field, name, value):
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        value = super().serialize_field(field, name, value)
        return spreadsheet_safe(value) if isinstance(value, str) else value
