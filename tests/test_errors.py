"""Errors a person can act on: one line each, with the fix, and no traceback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest
from servers import free_port
from conftest import REPO, run_crawl
from imgcrawl import exitstatus
from imgcrawl.spiders.gallery import GallerySpider


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR: " in line]


def test_unknown_argument_one_line_with_known_ones(demo_site, tmp_path):
    result = run_crawl(tmp_path, "-a", f"urls={demo_site.url('/gallery/')}")
    errors = error_lines(result.log)
    assert len(errors) == 1, errors
    assert "unknown -a urls=...: did you mean -a url=...? known arguments: url, max_pages, max_images" in errors[0]
    assert "'finish_reason': 'bad_argument'" in result.log and "Traceback" not in result.log
    assert result.returncode == exitstatus.USAGE
    assert not demo_site.hits
    # scrapyd adds _job (and any _-prefixed argument): accepted, the crawl runs.
    ok = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}", "-a", "_job=abc123", "-a", "max_pages=1")
    assert "'finish_reason': 'finished'" in ok.log and not error_lines(ok.log), ok.log[-2000:]
    assert ok.returncode == exitstatus.OK


def test_site_down_one_line_each_for_robots_txt_and_the_page(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/gallery/"  # nothing listens there
    result = run_crawl(tmp_path, "-a", f"url={url}", settings={"RETRY_TIMES": 0})
    # Nothing could be crawled: a cron job or scrapyd sees a status of its own.
    assert result.returncode == exitstatus.NOTHING_CRAWLED, result.log[-3000:]
    assert "Traceback" not in result.log and not error_lines(result.log), result.log[-3000:]
    warnings = [line for line in result.log.splitlines() if " WARNING: " in line]
    assert len(warnings) == 2, warnings
    assert "robots.txt of 127.0.0.1:" in warnings[0] and "(connection-refused)" in warnings[0]
    assert f"Page failed (connection-refused): {url}" in warnings[1]
    assert "'finish_reason': 'finished'" in result.log


class TaggedSpider(GallerySpider):
    name = "tagged"
    extra_arguments = ("tag",)  # read as self.tag (Scrapy sets -a values as attributes)

    def __init__(self, color=None, **kwargs):
        super().__init__(**kwargs)
        self.color = color


def test_subclass_arguments_are_known():
    spider = TaggedSpider(url="https://example.com/g", color="red", tag="cats", _job="j1")
    assert spider.argument_error is None and spider.tag == "cats" and spider.color == "red"
    bad = TaggedSpider(url="https://example.com/g", colour="red")
    assert bad.argument_error == (
        "unknown -a colour=...: did you mean -a color=...? "
        "known arguments: url, max_pages, max_images, site, profile, render, color, tag"
    )


def unprivileged() -> tuple[str, ...]:
    """Run as root without root's power over files (a user namespace), so modes apply."""
    if os.geteuid() != 0:
        return ()
    if not shutil.which("unshare") or subprocess.run(["unshare", "--user", "true"]).returncode:
        pytest.skip("running as root and cannot drop privileges with unshare --user")
    return ("unshare", "--user")


def test_store_not_writable_one_line(demo_site, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}",
                           store=locked / "store", wrapper=unprivileged())
    finally:
        locked.chmod(0o755)
    errors = error_lines(result.log)
    assert len(errors) == 1, result.log[-3000:]
    assert f"cannot write to IMAGES_STORE {locked / 'store'} (Permission denied)" in errors[0]
    assert "-s IMAGES_STORE=" in errors[0]
    assert "'finish_reason': 'store_not_writable'" in result.log and "Traceback" not in result.log
    assert result.returncode == exitstatus.STORE_FAILED
    assert not any(p.startswith("/img/") for p in demo_site.hits)


def test_full_disk_one_line_and_stops(demo_site, tmp_path):
    """A real full disk: the store is a 300 KiB tmpfs mounted in a private mount namespace."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) for a private tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    mount = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
             'mount -t tmpfs -o size=300k tmpfs "$0" && exec "$@"', str(small))
    if subprocess.run([*mount, "true"]).returncode:
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    manifest = tmp_path / "manifest.jsonl"  # on the big disk, to see what happened to each image
    result = run_crawl(
        tmp_path, "-a", f"url={demo_site.url('/gallery/')}", store=small / "store", wrapper=mount,
        settings={"FEEDS": json.dumps({str(manifest): {"format": "jsonlines"}})},
    )
    full = [line for line in error_lines(result.log) if "is full" in line]
    assert len(full) == 1, result.log[-3000:]
    # The detail is the OS's or SQLite's words, whichever write hit the full disk first.
    assert f"IMAGES_STORE {small / 'store'} is full (" in full[0]
    assert "-s IMAGES_STORE=" in full[0]
    assert "'finish_reason': 'disk_full'" in result.log
    assert result.returncode == exitstatus.STORE_FAILED
    assert "Image failed (disk-full)" not in result.log  # said once, not once per image
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert any(line["status"] == "failed" and line["reason"] == "disk-full" for line in lines)
    # Images stored before the disk filled are recorded with the digest of the served bytes
    # (the files themselves vanish with the private mount).
    stored = [line for line in lines if line["status"] == "downloaded"]
    assert stored, "the disk filled before any image was stored; the test's tmpfs is too small"
    for line in stored:
        body = demo_site.files[line["url"].split(str(demo_site.port), 1)[1]][1]
        assert line["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_worker_that_cannot_start_stops_the_crawl_once(demo_site, tmp_path):
    """A broken install (here numpy, which only the image workers import, cannot be
    imported, as on a scrapyd host missing a dependency): one ERROR line and a non-zero
    status, not a crawl that fails every image as "undecodable" and exits 0."""
    stub = tmp_path / "nonumpy" / "numpy"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('numpy is hidden by this test')\n")
    result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}",
                       env={"PYTHONPATH": f"{stub.parent}{os.pathsep}{REPO}"})
    errors = error_lines(result.log)
    assert len(errors) == 1 and "before it started" in errors[0], result.log[-3000:]
    assert "'finish_reason': 'worker_broken'" in result.log
    assert result.returncode == exitstatus.FAILED
    assert "(undecodable)" not in result.log
