"""The manifest: the default JSON Lines feed, and the same fields as CSV with -o."""

from __future__ import annotations

import csv
import json

from conftest import run_crawl
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
