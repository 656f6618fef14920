"""CSS in, image URLs out: ``url(…)`` values, and the densest entry of each ``image-set()``.

Pure (``re`` only). Page text reaches every pattern here on the reactor thread, so each runs
in time linear in its input: ``tests/test_bounds_regex.py`` feeds every rule 1 MB built to
make patterns backtrack.
"""

from __future__ import annotations

import re

# _IMAGE_SET_RE's body alternates a non-paren character with a paren-free group: no two ways
# to match a character, and a try that fails stops at the second unmatched "(" after it, so
# tries from successive starts rescan at most one other start's text.
_IMAGE_SET_RE = re.compile(r"(?:-webkit-)?image-set\(((?:[^()]|\([^()]*\))*)\)", re.I)
# ``url(…)`` is scanned by hand (:func:`css_urls`); these find where each scan starts and
# the density after an image-set() entry.
_URL_OPEN_RE = re.compile(r"url\(", re.I)
_DENSITY_RE = re.compile(r"\s*(?:([\d.]+)x)?", re.I)


class _NextAfter:
    """Where the next match of ``find(at)`` is in ``text``, for ``at`` that never decreases:
    the last answer is reused while it still lies ahead, so a run of failed ``url(`` scans
    that all look for the same far-off character costs one search, not one each."""

    def __init__(self, find):
        self.find = find
        self.asked, self.answer = None, -1

    def __call__(self, at: int) -> int:
        if self.asked is None or not (self.asked <= at and (self.answer < 0 or self.answer >= at)):
            self.asked, self.answer = at, self.find(at)
        return self.answer


def css_urls(text: str) -> list[tuple[str, str, str]]:
    r"""``(quote, url, density)`` for each ``url(…)`` in CSS text, in order.

    The same matches as ``re.findall(r"url\(\s*(['\"]?)(.+?)\1\s*\)\s*(?:([\d.]+)x)?",
    text, re.I)``, which this replaces: that pattern backtracks, and a style of
    ``url(url(url(…`` or of long runs of spaces took time quadratic in its length. Here each
    ``url(`` is tried once: a quoted value runs to the first same quote followed by ``)``
    (spaces allowed between), an unquoted one to the first ``)`` (trailing spaces dropped),
    neither across a line break; otherwise a quote is just the value's first character.
    """
    n = len(text)
    newline = _NextAfter(lambda at: text.find("\n", at) % (n + 1))  # n when there is none
    paren = _NextAfter(lambda at: text.find(")", at))

    def closer_of(quote: str):
        def find(at: int) -> int:  # the first ``quote`` at or after ``at`` followed by spaces and ")"
            at = text.find(quote, at)
            while at >= 0:
                end = at + 1
                while end < n and text[end].isspace():
                    end += 1
                if end < n and text[end] == ")":
                    return at
                at = text.find(quote, end)
            return -1
        return _NextAfter(find)

    closers = {"'": closer_of("'"), '"': closer_of('"')}
    spaces_before: dict[int, int] = {}  # ")" position -> where the spaces before it start

    def value_at(start: int) -> tuple[str, str, int] | None:
        """The value that starts at ``start`` (after the spaces): quote, url, end of ``)``."""
        first = text[start] if start < n else ""
        line_end = newline(start)
        if first in closers:
            close = closers[first](start + 2)
            if 0 <= close <= line_end:
                end = close + 1
                while text[end] != ")":
                    end += 1
                return first, text[start + 1 : close], end + 1
        close = paren(start + 1)
        if close < 0:
            return None
        if close not in spaces_before:
            stop = close
            while stop > 0 and text[stop - 1].isspace():
                stop -= 1
            spaces_before[close] = stop
        stop = max(start + 1, spaces_before[close])
        return None if line_end < stop else ("", text[start:stop], close + 1)

    found = []
    pos = 0
    while (opening := _URL_OPEN_RE.search(text, pos)) is not None:
        start = after = opening.end()
        while start < n and text[start].isspace():
            start += 1
        value = value_at(start)
        if value is None and start > after and start < n and text[start] == ")":
            # "url(  )": the pattern gave back one space to be the value, the last one
            # that is not a line break.
            for at in range(start - 1, after - 1, -1):
                if text[at] != "\n":
                    value = ("", text[at], start + 1)
                    break
        if value is None:
            pos = start
            continue
        quote, url, end = value
        density = _DENSITY_RE.match(text, end)
        found.append((quote, url, density.group(1) or ""))
        pos = density.end()
    return found


def _density(value: str) -> float:
    """An ``image-set()`` entry's ``Nx``; 1 when absent or not a number (``1.2.3x``)."""
    try:
        return float(value or 1)
    except ValueError:
        return 1.0


def css_image_urls(style: str) -> list[str]:
    """``url(…)`` values in a style, taking the densest entry of each ``image-set()``."""
    urls: list[str] = []

    def densest(match: re.Match) -> str:
        entries = [(_density(x), url) for _, url, x in css_urls(match.group(1))]
        if entries:
            urls.append(max(entries, key=lambda e: e[0])[1])
        return ""

    rest = _IMAGE_SET_RE.sub(densest, style)
    urls.extend(url for _, url, _ in css_urls(rest))
    return urls
