"""Image bodies in memory: a byte budget for them, and the decompression that waits for it.

Counting images alone does not bound memory: an image may be up to ``DOWNLOAD_MAXSIZE``, and
a small compressed download as large once decompressed. ``IMGCRAWL_MAX_INFLIGHT_BYTES``
bounds the bytes of image bodies from when each is received until its worker is done;
while they fill it, no image download starts and no compressed image is decompressed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import deque

from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred

from imgcrawl import compat

# The request meta key under which the pipeline puts an image's share of the budget
# (:class:`HeldBytes`), read by :class:`HttpCompressionMiddleware`.
INFLIGHT_META = "imgcrawl_inflight_bytes"

# Bodies of images in flight, in bytes. Image counts alone do not bound memory: an image may
# be up to DOWNLOAD_MAXSIZE, and a small compressed download as large once decompressed.
DEFAULT_MAX_INFLIGHT_BYTES = 32 * 1024 * 1024


class InflightBytes:
    """The bytes of image bodies in memory, each counted from when it is received until its
    worker is done, and a budget for them (0: none). While they fill it, no new image
    download starts and no received image is decompressed. The one admitted last may take
    it over by one body, so any single image up to DOWNLOAD_MAXSIZE still gets through."""

    # A body released while its response is still referenced waits for that response to be
    # freed before it makes room: a failed image's response stays referenced from its
    # exception's frames until Scrapy's media pipeline drops them, a few reactor turns
    # later. At the latest after this many seconds, in case something keeps it.
    LINGER = 1.0

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self.waiting: deque[Deferred] = deque()
        self.waking = False
        self.held_by_item: dict[int, list[HeldBytes]] = {}

    def share(self, request, item) -> HeldBytes:
        """A new share for an image about to be downloaded: in its request's meta (so the
        decompression middleware and retries use it) and listed under its item, whose
        shares are all released when the item completes, whatever happened to its images."""
        held = request.meta[INFLIGHT_META] = HeldBytes(self)
        if item is not None:
            self.held_by_item.setdefault(id(item), []).append(held)
        return held

    def release_item(self, item) -> None:
        for held in self.held_by_item.pop(id(item), ()):
            held.release()

    async def room(self) -> None:
        # Checked again after each wake-up: whoever woke first may have taken the room.
        while self.budget and self.used >= self.budget:
            d: Deferred = Deferred()
            self.waiting.append(d)
            await maybe_deferred_to_future(d)

    def change(self, delta: int, response=None) -> None:
        """Count ``delta`` more bytes; a release (``delta < 0``) of ``response``'s body makes
        room once that response is gone."""
        self.used += delta
        if delta >= 0 or not self.waiting:
            return
        if response is None:
            self._wake_soon()
            return
        from twisted.internet import reactor  # noqa: PLC0415 - the installed reactor

        weakref.finalize(response, self._wake_soon)
        reactor.callLater(self.LINGER, self._wake_soon)

    def _wake_soon(self) -> None:
        # On a reactor turn of its own, not from inside whatever freed or released a body.
        if not self.waking:
            from twisted.internet import reactor  # noqa: PLC0415 - the installed reactor

            self.waking = True
            reactor.callLater(0, self._wake)

    def _wake(self) -> None:
        self.waking = False
        while self.waiting and self.used < self.budget:
            self.waiting.popleft().callback(None)


class HeldBytes:
    """One image's share of :class:`InflightBytes`: the size of its latest body. Travels in
    its request's meta (``INFLIGHT_META``), so retries share it."""

    __slots__ = ("budget", "response", "size")

    def __init__(self, budget: InflightBytes):
        self.budget = budget
        self.response = None  # a weak reference to the response whose body is counted
        self.size = 0

    def room(self):
        return self.budget.room()

    def hold(self, size: int, response) -> None:
        delta, self.size = size - self.size, size
        self.response = weakref.ref(response)
        self.budget.change(delta)

    def release(self) -> None:
        response = self.response() if self.response is not None else None
        size, self.size, self.response = self.size, 0, None
        if size:
            self.budget.change(-size, response)


def release(request) -> None:
    """Release the share of ``request``'s image, if it has one (its body is done with)."""
    held = request.meta.get(INFLIGHT_META)
    if held is not None:
        held.release()


@contextlib.contextmanager
def holding(request, response):
    """Count ``response``'s body as ``request``'s image's share while the block runs (it has
    been counted since the decompression middleware saw it, unless that one is off)."""
    held = request.meta.get(INFLIGHT_META)
    if held is None:
        yield
        return
    held.hold(len(response.body), response)
    try:
        yield
    finally:
        held.release()


class HttpCompressionMiddleware(compat.OneLineHttpCompression):
    """Scrapy's decompression (``DOWNLOADER_MIDDLEWARES`` swaps it in at 590), with a body
    over the size limit once decompressed refused in one line (``too-large``), and an image's
    body counted against the pipeline's in-flight byte budget from here on.

    Decompression is where a small download becomes a large body, so a compressed image
    waits for room in the budget first; its share is then the decompressed size, which the
    pipeline releases when the image's worker is done. Pages are not counted: Scrapy holds
    a page until its callback is done, with no hook to release it at.
    """

    async def process_response(self, request, response):
        held = request.meta.get(INFLIGHT_META)
        if held is None:
            return super().process_response(request, response)
        # An earlier body of this image (an error page being retried) is gone.
        held.release()
        if request.method != "HEAD" and response.headers.get("Content-Encoding"):
            await held.room()
        response = super().process_response(request, response)
        held.hold(len(response.body), response)
        return response
