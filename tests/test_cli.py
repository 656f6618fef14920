"""``imgcrawl``: one command from any directory, an exit status a cron job can test, a
start of a few lines and the summary last. Each run is the installed console script in a
directory with no scrapy.cfg, as a person's shell runs it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import CRAWL_TIMEOUT, LocalSite, crawl_command
from imgcrawl import exitstatus
from imgcrawl.demo import build_gallery
from test_errors import unprivileged

LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[([\w.]+)\] (DEBUG|INFO|WARNING|ERROR|CRITICAL): ")
ALLOW_LOCAL = ("-s", "IMGCRAWL_ALLOW_PRIVATE=True")  # the test sites are on 127.0.0.1


def imgcrawl(cwd, *args: str, wrapper: tuple[str, ...] = (), timeout: float = CRAWL_TIMEOUT):
    exe = shutil.which("imgcrawl")
    assert exe, "the imgcrawl console script is not installed (pip install -e .)"
    assert not any((d / "scrapy.cfg").exists() for d in (cwd, *cwd.parents)), "must run outside any Scrapy project"
    env = {k: v for k, v in os.environ.items() if k not in ("SCRAPY_SETTINGS_MODULE", "PYTHONPATH")}
    return subprocess.run([*wrapper, exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def records(log: str) -> list[tuple[str, str, str]]:
    """(logger, level, first line) of each log record."""
    return [(m.group(1), m.group(2), line) for line in log.splitlines() if (m := LOG_RECORD.match(line))]


@pytest.mark.parametrize("stats, status", [
    ({"finish_reason": "finished", "imgcrawl/pages": 6, "imgcrawl/failed/undecodable": 1}, exitstatus.OK),
    ({"finish_reason": "imgcrawl_max_images", "imgcrawl/pages": 2}, exitstatus.OK),
    ({"finish_reason": "closespider_timeout", "imgcrawl/pages": 0}, exitstatus.OK),  # tried no page yet
    # A distributed worker that found nothing left to do tried no page: not "nothing crawled".
    ({"finish_reason": "finished", "imgcrawl/pages": 0}, exitstatus.OK),
    ({"finish_reason": "finished", "imgcrawl/failed/dns": 1}, exitstatus.OK),  # pages not counted: no judgement
    ({"finish_reason": "finished", "imgcrawl/pages": 0, "imgcrawl/failed/dns": 2}, exitstatus.NOTHING_CRAWLED),
    ({"finish_reason": "shutdown", "imgcrawl/pages": 3}, exitstatus.FAILED),
    ({"finish_reason": "closespider_errorcount", "imgcrawl/pages": 3}, exitstatus.FAILED),
    ({"finish_reason": "manifest_failed", "imgcrawl/pages": 3}, exitstatus.FAILED),
    ({}, exitstatus.FAILED),  # never started
    ({"finish_reason": "bad_argument", "imgcrawl/pages": 0}, exitstatus.USAGE),
    ({"finish_reason": "store_not_writable", "imgcrawl/pages": 1}, exitstatus.STORE_FAILED),
    ({"finish_reason": "disk_full", "imgcrawl/pages": 0, "imgcrawl/failed/disk-full": 1}, exitstatus.STORE_FAILED),
])
def test_exit_status_of_stats(stats, status):
    assert exitstatus.exit_status(stats) == status


def test_help_lists_the_commands_with_examples_and_loads_no_scrapy(tmp_path):
    proc = imgcrawl(tmp_path, "--help", timeout=30)
    assert proc.returncode == 0, proc.stderr
    for command, example in (("crawl", "imgcrawl crawl https://"), ("demo", "imgcrawl demo")):
        assert re.search(rf"^  {command} .*{re.escape(example)}", proc.stdout, re.M), proc.stdout
    assert "exit status:" in proc.stdout and "3  nothing crawled" in proc.stdout
    # python -m imgcrawl is the same command; --help answers without importing the crawler.
    code = ("import sys\nfrom imgcrawl.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'scrapy', 'twisted', 'PIL', 'rich', 'parsel'}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert loaded.stdout.splitlines()[-1] == "[]", loaded.stdout + loaded.stderr
    module = subprocess.run([sys.executable, "-m", "imgcrawl", "crawl", "--help"], capture_output=True, text=True, timeout=30)
    assert module.returncode == 0 and "--max-images N" in module.stdout, module.stderr


def test_crawl_from_any_directory_with_a_brief_start_and_the_summary_last(demo_site, tmp_path):
    secrets = ("-s", "AWS_SECRET_ACCESS_KEY=hunter2", "-s", "HOOK_URL=https://bot:hunter3@hooks.example/x")
    proc = imgcrawl(tmp_path, "crawl", demo_site.url("/gallery/"), "--max-images", "5", *ALLOW_LOCAL, *secrets)
    assert proc.returncode == exitstatus.OK, proc.stderr[-3000:]
    # DIR defaults to ./images; the files are the bytes the site served.
    served = {hashlib.sha256(body).hexdigest() for path, (_, body) in build_gallery().items() if path.startswith("/img/")}
    stored = list((tmp_path / "images" / "full").iterdir())
    assert len(stored) == 5 and {hashlib.sha256(p.read_bytes()).hexdigest() for p in stored} <= served
    assert len((tmp_path / "images" / "manifest.jsonl").read_text().splitlines()) == 5

    logged = records(proc.stderr)
    first_crawl_line = next(i for i, (_, _, line) in enumerate(logged) if line.endswith("INFO: Spider opened"))
    start = [line for _, level, line in logged[:first_crawl_line] if level == "INFO"]
    assert len(start) <= 3, "\n".join(start)
    assert f"images to {tmp_path / 'images'}" in start[0] and "imgcrawl 0.1.0 (Scrapy 2." in start[0]
    assert f"Crawling {demo_site.url('/gallery/')} | at most 5 images" in start[1]
    assert start[2] == (start[2].split(" INFO: ")[0] + " INFO: Settings given: AWS_SECRET_ACCESS_KEY=***, "
                        "HOOK_URL=https://bot:***@hooks.example/x, IMGCRAWL_ALLOW_PRIVATE=True")
    assert "hunter" not in proc.stderr
    for detail in ("Versions:", "Enabled extensions", "Overridden settings", "Dumping Scrapy stats", "Spider closed"):
        assert detail not in proc.stderr, detail
    assert "Summary (finished): 5 images stored" in logged[-1][2], logged[-3:]
    assert proc.stderr.rstrip().endswith(f"manifest: {tmp_path / 'images' / 'manifest.jsonl'}"), proc.stderr[-500:]
    assert "\x1b" not in proc.stderr + proc.stdout  # stderr is a pipe: plain lines


@pytest.mark.parametrize("path, args, status, said", [
    ("/gallery/", ("-a", "max_image=5", *ALLOW_LOCAL), exitstatus.USAGE,
     "ERROR: imgcrawl: unknown -a max_image=...: did you mean -a max_images=...?"),
    ("/missing/", ALLOW_LOCAL, exitstatus.NOTHING_CRAWLED, "Page failed (http-404)"),
    ("/gallery/", (), exitstatus.NOTHING_CRAWLED, "Page failed (private-address)"),  # the SSRF guard
], ids=["unknown-argument", "start-page-404", "start-url-refused"])
def test_exit_status(demo_site, tmp_path, path, args, status, said):
    proc = imgcrawl(tmp_path, "crawl", demo_site.url(path), *args)
    assert proc.returncode == status, proc.stderr[-3000:]
    assert said in proc.stderr, proc.stderr[-3000:]
    # The summary, last, says what the status means.
    assert proc.stderr.rstrip().endswith(f"exit status {status}: {exitstatus.MEANINGS[status]}"), proc.stderr[-600:]
    assert not any(p.startswith("/img/") for p in demo_site.hits)


def test_bad_usage_exits_2_before_anything_starts(tmp_path):
    for args, said in (
        (("crawl", "gallery.example.com"), "'gallery.example.com' is not an absolute http(s) URL"),
        (("crawl", "https://example.com/", "--max-images", "0"), "'0' is not a whole number of at least 1"),
        (("crawl", "https://example.com/", "-s", "DOWNLOAD_DELAY"), "'DOWNLOAD_DELAY' is not NAME=VALUE"),
        (("crawl", "https://example.com/", "-a", "url=https://example.org/"), "use URL..., not -a url=..."),
        (("crawl", "https://example.com/", "-a", "render=browser"), "use --render, not -a render=..."),
        (("crawl", "https://example.com/", "--render", "chrome"), "invalid choice: 'chrome'"),
        (("crawl", "https://example.com/", "--site", "wordpress", "--profile", "p.toml"), "not allowed with argument"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ):
        proc = imgcrawl(tmp_path, *args, timeout=30)
        assert proc.returncode == exitstatus.USAGE and said in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.splitlines()) == 2 and "Spider opened" not in proc.stderr, proc.stderr  # usage, the reason
    # scrapy crawl of a spider that does not exist: a usage error, not a traceback and 1.
    cmd, env = crawl_command(tmp_path / "store", spider="galery")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == exitstatus.USAGE, proc.stderr[-2000:]
    assert "Spider not found: galery; the spiders are: gallery," in proc.stderr and "Traceback" not in proc.stderr


def test_store_not_writable_exits_4(demo_site, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        proc = imgcrawl(tmp_path, "crawl", demo_site.url("/gallery/"), "-o", str(locked / "images"), *ALLOW_LOCAL,
                        wrapper=unprivileged())
    finally:
        locked.chmod(0o755)
    assert proc.returncode == exitstatus.STORE_FAILED, proc.stderr[-3000:]
    assert f"cannot write to IMAGES_STORE {locked / 'images'}" in proc.stderr


def test_interrupted_crawl_exits_1(tmp_path):
    held = "/img/photo001.jpg"
    site = LocalSite(build_gallery(), delays={held: 3.0}).start()
    try:
        exe = shutil.which("imgcrawl")
        proc = subprocess.Popen([exe, "crawl", site.url("/gallery/"), *ALLOW_LOCAL], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not site.hits[held] and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert site.hits[held], "the held image was never requested"
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Scrapy finishes what is in flight, then stops
        _, stderr = proc.communicate(timeout=CRAWL_TIMEOUT)
    finally:
        site.stop()
    assert proc.returncode == exitstatus.FAILED, stderr[-3000:]
    assert "Summary (shutdown)" in stderr and stderr.rstrip().endswith(exitstatus.MEANINGS[exitstatus.FAILED])
