"""Progress while a crawl runs: one live display when stderr is a terminal (a real
pseudo-terminal here), plain log lines otherwise; either names the image that stalls."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import termios
import time

import pytest
from conftest import CRAWL_TIMEOUT, LocalSite, run_crawl
from imgcrawl import exitstatus
from imgcrawl.demo import build_gallery

HELD = "/img/photo001.jpg"
ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07)")


@pytest.fixture
def stalling_site():
    """The demo gallery, where one image is answered only after 3 seconds."""
    site = LocalSite(build_gallery(), delays={HELD: 3.0}).start()
    yield site
    site.stop()


def run_on_terminal(cmd: list[str], cwd, timeout: float) -> tuple[int, str]:
    """Run ``cmd`` with its stderr on a pseudo-terminal 200 columns wide; its exit status
    and everything it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def test_terminal_shows_one_live_display_naming_the_stalled_image(stalling_site, tmp_path):
    exe = shutil.which("imgcrawl")
    assert exe, "the imgcrawl console script is not installed (pip install -e .)"
    status, screen = run_on_terminal(
        [exe, "crawl", stalling_site.url("/gallery/"), "-o", str(tmp_path / "images"),
         "-s", "IMGCRAWL_ALLOW_PRIVATE=True", "-s", "IMGCRAWL_STALLED_AFTER=0.5", "-s", "IMGCRAWL_PROGRESS_INTERVAL=0.5"],
        tmp_path, CRAWL_TIMEOUT,
    )
    assert status == exitstatus.OK, screen[-3000:]
    assert ESCAPE.search(screen), "no escape codes: the display was not drawn"
    text = ESCAPE.sub("", screen)
    # While the image is held, the display says which URL it waits for, and for how long.
    waits = re.findall(r"(\d+) s  " + re.escape(stalling_site.url(HELD)), text)
    assert waits and max(map(int, waits)) >= 1, text[-3000:]
    assert "1 request waiting over 0.5 s; the longest:" in text
    assert re.search(r"\d+ stored \([\d.]+ MB\) · \d+ already stored · 1 failed · 6 pages", text), text[-3000:]
    assert re.search(r"[\d.]+ images/s · [\d.]+ MB/s · queue: \d+ pages, \d+ images", text), text[-3000:]
    # The display replaces the periodic lines, and goes when the crawl ends: the summary is last.
    assert "Progress:" not in text
    summary = text.rindex("Summary (finished): 18 images stored")
    assert summary > text.rindex(stalling_site.url(HELD)), text[-2000:]
    assert text.rstrip().endswith(f"manifest: {tmp_path / 'images' / 'manifest.jsonl'}"), text[-1000:]


def test_without_a_terminal_plain_lines_name_the_stalled_image(stalling_site, tmp_path):
    result = run_crawl(
        tmp_path, "-a", f"url={stalling_site.url('/gallery/')}",
        settings={"IMGCRAWL_PROGRESS_INTERVAL": 0.5, "IMGCRAWL_STALLED_AFTER": 0.5},
    )
    assert result.returncode == exitstatus.OK, result.log[-3000:]
    assert "\x1b" not in result.log  # stderr is a pipe: no escape codes
    waiting = re.findall(r"INFO: Progress: .* \| waiting (\d+) s for " + re.escape(stalling_site.url(HELD)) + "$",
                         result.log, re.M)
    assert waiting and max(map(int, waiting)) >= 1, result.log[-3000:]
