"""README's first command: ``imgcrawl demo`` crawls the bundled offline gallery."""

from __future__ import annotations

import json
import shutil
import subprocess

from conftest import CRAWL_TIMEOUT


def test_imgcrawl_demo_crawls_the_offline_gallery(tmp_path):
    exe = shutil.which("imgcrawl")
    assert exe, "the imgcrawl console script is not installed (pip install -e .)"
    proc = subprocess.run(
        [exe, "demo", "--store", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=CRAWL_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "18 images stored" in proc.stdout
    assert "18 thumbnails" in proc.stdout
    assert 'failed: {"undecodable": 1}' in proc.stdout
    lines = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sum(line["status"] == "downloaded" for line in lines) == 18
    assert len(list((tmp_path / "out" / "full").iterdir())) == 18
