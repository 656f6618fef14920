"""``IMGCRAWL_MAX_IMAGES`` / ``IMGCRAWL_MAX_BYTES``: stop once this much is stored.

Images and bytes are counted when an image is admitted for storing, not when it is
stored, so the images still in flight when a quota is reached never overshoot it. Pure.
"""

from __future__ import annotations

from collections.abc import Callable

from imgcrawl.failures import Failed


class Quotas:
    def __init__(self, max_images: int, max_bytes: int, on_reached: Callable[[str, str], None]):
        self.max_images = max_images  # 0 = no limit
        self.max_bytes = max_bytes
        self.on_reached = on_reached  # (what, close reason), called once
        self.images = self.bytes = 0  # stored or being stored
        self.stored = 0
        self.reached: str | None = None

    def _reach(self, what: str, close_reason: str) -> None:
        if not self.reached:
            self.reached = what
            self.on_reached(what, close_reason)

    def check(self) -> None:
        if self.reached:
            raise Failed("quota", self.reached)

    def admit(self, size: int) -> None:
        """Count an image of ``size`` bytes, or refuse it with ``Failed("quota")``."""
        self.check()
        if self.max_bytes and self.bytes + size > self.max_bytes:
            self._reach(f"IMGCRAWL_MAX_BYTES={self.max_bytes} bytes stored", "imgcrawl_max_bytes")
            self.check()
        if self.max_images and self.images >= self.max_images:
            raise Failed("quota", f"IMGCRAWL_MAX_IMAGES={self.max_images} being stored")
        self.images += 1
        self.bytes += size

    def release(self, size: int) -> None:
        """An admitted image that was not stored after all."""
        self.images -= 1
        self.bytes -= size

    def record_stored(self) -> None:
        self.stored += 1
        if self.max_images and self.stored >= self.max_images:
            self._reach(f"IMGCRAWL_MAX_IMAGES={self.max_images} images stored", "imgcrawl_max_images")
