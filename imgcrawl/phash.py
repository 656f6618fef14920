"""Perceptual hashes and finding the near ones: pure (Pillow and numpy, no Scrapy).

:func:`phash` is the DCT hash (``imagehash.phash``'s, with the same bits but where
coefficients tie at the median): the image in grey at 32x32, its 2-D DCT, and one bit per
coefficient of the lowest 8x8 frequencies, set when the coefficient is above their median. Resizing, recompressing, converting the format or
cropping a little moves few of the 64 bits; a different photo differs in about half.

:class:`NearIndex` finds, among the hashes added to it, the nearest within a Hamming
distance by multi-index hashing: each hash is filed under its four 16-bit quarters; two
hashes within ``d`` bits agree to within ``d // 4`` bits on at least one quarter (were all
four further apart, the whole would be), so a query looks only in the buckets of its own
quarters' near values, never at the whole collection.
"""

from __future__ import annotations

import functools
from array import array
from itertools import combinations

from PIL import Image

HASH_BITS = 64
_SIDE = 8  # the low frequencies kept: 8x8 = 64 bits
_SAMPLE = 32  # the grey image the DCT runs on, 32x32


@functools.cache
def _dct_rows():
    """Rows 0..7 of the (unscaled) DCT-II matrix: low = C @ pixels @ C.T is the 8x8 corner
    of the full 32x32 transform. A scale per axis changes no bit (bits compare with a median).
    numpy is imported here, by the first hash: a crawl whose image workers are processes
    only looks hashes up, and does not load it."""
    import numpy as np

    k, n = np.arange(_SIDE)[:, None], np.arange(_SAMPLE)[None, :]
    return np.cos(np.pi * (2 * n + 1) * k / (2 * _SAMPLE))


def phash(image: Image.Image) -> int:
    """The 64-bit DCT hash of ``image`` (any size; RGB or L pixels)."""
    import numpy as np

    grey = image.convert("L").resize((_SAMPLE, _SAMPLE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    rows = _dct_rows()
    low = rows @ pixels @ rows.T
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def to_hex(value: int) -> str:
    return f"{value:016x}"


def from_hex(text: str) -> int:
    value = int(text, 16)
    if not 0 <= value < 1 << HASH_BITS or len(text) != HASH_BITS // 4:
        raise ValueError(f"not a 64-bit hash in hex: {text!r}")
    return value


def distance(a: int, b: int) -> int:
    """The Hamming distance: how many of the 64 bits differ."""
    return (a ^ b).bit_count()


_QUARTERS = 4
_QUARTER_BITS = HASH_BITS // _QUARTERS
_QUARTER_MASK = (1 << _QUARTER_BITS) - 1


def _flips(bits: int, most: int) -> list[int]:
    """Every ``bits``-wide mask with at most ``most`` bits set."""
    masks = [0]
    for count in range(1, most + 1):
        masks += [sum(1 << i for i in chosen) for chosen in combinations(range(bits), count)]
    return masks


class NearIndex:
    """Keys (URLs) by 64-bit hash; :meth:`nearest` finds the closest within ``max_distance``.

    Adding a key again replaces its hash. Each quarter's ``d // 4``-bit neighbourhood is
    probed (17 buckets per quarter up to a distance of 7, 137 up to 11); each bucket holds
    about n / 65536 hashes when the hashes are spread out.

    Compact, because it grows with the collection: each key gets a number in the order it
    was added; the hashes sit in one array by number and the buckets are arrays of
    numbers, so a key costs its place in one dict and one list, 8 bytes of hash and four
    4-byte bucket entries, beside the key string itself.
    """

    def __init__(self, max_distance: int):
        if not 0 <= max_distance < HASH_BITS:
            raise ValueError(f"a near-duplicate distance is 0 to {HASH_BITS - 1} bits, not {max_distance}")
        self.max_distance = max_distance
        self._probes = _flips(_QUARTER_BITS, max_distance // _QUARTERS)
        self._buckets: list[dict[int, array]] = [{} for _ in range(_QUARTERS)]  # quarter -> numbers
        self._numbers: dict[str, int] = {}  # key -> its number
        self._keys: list[str | None] = []  # number -> key (None once removed or moved)
        self._values = array("Q")  # number -> hash

    def __len__(self) -> int:
        return len(self._numbers)

    @staticmethod
    def _quarters(value: int) -> list[int]:
        return [(value >> shift) & _QUARTER_MASK for shift in range(0, HASH_BITS, _QUARTER_BITS)]

    def hash_of(self, key: str) -> int | None:
        number = self._numbers.get(key)
        return None if number is None else self._values[number]

    def add(self, key: str, value: int) -> None:
        """File ``key`` under ``value`` (again: moved; under the same value: no change)."""
        if self.hash_of(key) == value:
            return
        self.remove(key)
        number = self._numbers[key] = len(self._keys)
        self._keys.append(key)
        self._values.append(value)
        for bucket, quarter in zip(self._buckets, self._quarters(value)):
            numbers = bucket.get(quarter)
            if numbers is None:
                numbers = bucket[quarter] = array("I")
            numbers.append(number)

    def remove(self, key: str) -> None:
        number = self._numbers.pop(key, None)
        if number is None:
            return
        self._keys[number] = None
        for bucket, quarter in zip(self._buckets, self._quarters(self._values[number])):
            numbers = bucket[quarter]
            numbers.remove(number)
            if not numbers:
                del bucket[quarter]

    def nearest(self, value: int, exclude: str | None = None) -> tuple[str, int] | None:
        """``(key, distance)`` of the closest hash within ``max_distance`` (of equally close
        keys, the one added first), or None."""
        candidates: set[int] = set()
        for bucket, quarter in zip(self._buckets, self._quarters(value)):
            for flip in self._probes:
                numbers = bucket.get(quarter ^ flip)
                if numbers:
                    candidates.update(numbers)
        values, keys, limit = self._values, self._keys, self.max_distance
        best: tuple[int, int] | None = None  # (distance, number)
        for number in candidates:
            d = (value ^ values[number]).bit_count()
            if d <= limit and (best is None or (d, number) < best) and keys[number] != exclude:
                best = (d, number)
        return (keys[best[1]], best[0]) if best else None
