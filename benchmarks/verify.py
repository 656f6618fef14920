"""Check a contender's output against the corpus: every original present and byte-exact
(sha256), every thumbnail present, a JPEG, within 256 px.

Every contender names files as Scrapy does: ``full/<sha1 of url>.<ext>`` and
``thumbs/small/<sha1 of url>.jpg``; where the output has a ``manifest.jsonl`` (imgcrawl), the
manifest says which files hold each URL instead, since imgcrawl stores the same bytes under
two URLs once (W1x10 serves each of W1's files under ten URLs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass
class Verdict:
    expected: int
    originals_present: int = 0
    originals_exact: int = 0
    thumbs_ok: int = 0

    @property
    def ok(self) -> bool:
        return self.expected == self.originals_exact == self.thumbs_ok

    def summary(self) -> str:
        return (
            f"originals {self.originals_present}/{self.expected} present, "
            f"{self.originals_exact}/{self.expected} byte-exact; thumbs {self.thumbs_ok}/{self.expected}"
        )


def _thumb_ok(path: Path, box: int) -> bool:
    try:
        with Image.open(path) as image:
            return image.format == "JPEG" and max(image.size) <= box
    except (OSError, ValueError):
        return False


def recorded_files(out: Path) -> dict[str, tuple[Path, Path]] | None:
    """url -> (original, small thumbnail) as the manifest records them, or None."""
    manifest = out / "manifest.jsonl"
    if not manifest.is_file():
        return None
    files = {}
    for line in manifest.read_text().splitlines():
        record = json.loads(line)
        if record.get("path"):
            files[record["url"]] = (out / record["path"], out / record["thumbs"]["small"])
    return files


def verify(out: Path, expected: dict[str, str], box: int = 256) -> Verdict:
    """``expected`` maps each image URL to the sha256 of the bytes the server sent."""
    recorded = recorded_files(out)
    full = out / "full"
    stored = {p.stem: p for p in full.iterdir()} if full.is_dir() else {}
    verdict = Verdict(len(expected))
    for url, sha256 in expected.items():
        guid = hashlib.sha1(url.encode()).hexdigest()  # noqa: S324 - a name
        if recorded is not None:
            original, thumb = recorded.get(url, (None, out / "missing"))
            original = original if original is not None and original.is_file() else None
        else:
            original, thumb = stored.get(guid), out / "thumbs" / "small" / f"{guid}.jpg"
        if original is not None:
            verdict.originals_present += 1
            verdict.originals_exact += hashlib.sha256(original.read_bytes()).hexdigest() == sha256
        verdict.thumbs_ok += _thumb_ok(thumb, box)
    return verdict
