"""What the progress line and the live display say: counts, rates, ETA and the requests
waiting longest. Pure: :class:`imgcrawl.extensions.Progress` feeds it from signals.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

MB = 1024 * 1024


@dataclass
class Counts:
    """Pages fetched, and images by what became of them."""

    pages: int = 0
    stored: int = 0
    skipped: int = 0  # already stored and up to date
    failed: int = 0
    bytes: int = 0  # of the images stored
    failures: dict[str, list] = field(default_factory=dict)  # reason -> [count, first URL]; bounded by reasons
    near_duplicates: int = 0  # images resembling an earlier one (near_duplicate_of)
    near_skipped: int = 0  # of those, not stored (IMGCRAWL_SKIP_NEAR_DUPLICATES)

    @property
    def done(self) -> int:
        return self.stored + self.skipped + self.failed + self.near_skipped


class Rates:
    """Images/s and MB/s between the oldest and the newest of the last ``size`` samples."""

    def __init__(self, size: int):
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=size)

    def sample(self, now: float, done: int, nbytes: int) -> tuple[float, float]:
        self.samples.append((now, done, nbytes))
        (t0, done0, bytes0), (t1, done1, bytes1) = self.samples[0], self.samples[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, 0.0
        return (done1 - done0) / span, (bytes1 - bytes0) / MB / span


class InFlight:
    """Requests in the downloader (queued for their host or transferring), by when each
    entered it. Bounded by what the downloader holds."""

    def __init__(self):
        self.entered: dict[object, tuple[float, str]] = {}  # request -> (time, url), oldest first

    def add(self, request, url: str, now: float) -> None:
        self.entered[request] = (now, url)

    def remove(self, request) -> None:
        self.entered.pop(request, None)

    def waiting(self, now: float, after: float, limit: int) -> tuple[list[tuple[float, str]], int]:
        """The (seconds, url) of the ``limit`` requests waiting longest, of those waiting at
        least ``after`` seconds, oldest first; and how many wait that long."""
        longest: list[tuple[float, str]] = []
        count = 0
        for entered, url in self.entered.values():  # insertion order is time order
            if now - entered < after:
                break
            count += 1
            if len(longest) < limit:
                longest.append((now - entered, url))
        return longest, count


SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|_KEY", re.IGNORECASE)


def redacted(name: str, value) -> str:
    """A setting's value as the log may show it: no secret, no password in a URL."""
    if SECRET_NAME.search(name):
        return "***"
    text = str(value)
    if "@" in text and "://" in text:
        parts = urlsplit(text)
        if parts.password:
            return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
    return text


def eta(done: int, limit: int | None, elapsed: float) -> float | None:
    """Seconds left to reach ``limit`` at the average rate so far; None when unknowable."""
    if not limit or not done or elapsed <= 0:
        return None
    return max(0, limit - done) / (done / elapsed)


def clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


@dataclass(frozen=True)
class Snapshot:
    counts: Counts
    elapsed: float
    images_rate: float
    mb_rate: float
    pages_queued: int
    images_queued: int
    limit: int | None  # max images, when one is set
    eta: float | None
    stalled_after: float  # seconds a request waits before it is named
    waiting: list[tuple[float, str]]  # the requests waiting longest: (seconds, url)
    waiting_count: int  # how many wait at least stalled_after seconds


def progress_line(s: Snapshot) -> str:
    """The INFO line logged every ``IMGCRAWL_PROGRESS_INTERVAL`` seconds."""
    c = s.counts
    line = (
        f"Progress: {c.pages} pages, {c.stored} images stored, {c.skipped} skipped, {c.failed} failed | "
        f"{s.images_rate:.1f} images/s, {s.mb_rate:.2f} MB/s | "
        f"queue: {s.pages_queued} pages, {s.images_queued} images"
    )
    if s.eta is not None:
        line += f", ETA {clock(s.eta)}"
    if s.waiting:
        seconds, url = s.waiting[0]
        more = f" (+{s.waiting_count - 1} more)" if s.waiting_count > 1 else ""
        line += f" | waiting {seconds:.0f} s for {url}{more}"
    return line


def display_lines(s: Snapshot) -> list[str]:
    """The live display's status lines (on a terminal)."""
    c = s.counts
    rates = [f"{s.images_rate:.1f} images/s", f"{s.mb_rate:.2f} MB/s",
             f"queue: {s.pages_queued} pages, {s.images_queued} images"]
    if s.eta is not None:
        rates.append(f"ETA {clock(s.eta)} ({c.done}/{s.limit} images)")
    return [
        " · ".join([f"{c.stored} stored ({c.bytes / MB:.1f} MB)", f"{c.skipped} already stored",
                    f"{c.failed} failed", f"{c.pages} pages", clock(s.elapsed)]),
        " · ".join(rates),
    ]


def waiting_lines(s: Snapshot) -> list[str]:
    """The live display's lines for the requests waiting longest; none while none stalls."""
    if not s.waiting:
        return []
    many = "requests" if s.waiting_count > 1 else "request"
    return [f"{s.waiting_count} {many} waiting over {s.stalled_after:g} s; the longest:"] + [
        f"  {seconds:5.0f} s  {url}" for seconds, url in s.waiting
    ]
