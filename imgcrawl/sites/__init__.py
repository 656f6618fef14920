"""Declarative site profiles: a TOML file per site, no code.

Built-in profiles are the ``*.toml`` files in this package (``-a site=NAME``); a user's own
file is ``-a profile=path/to/site.toml``. Keys (all optional)::

    name = "mysite"                       # defaults to the file name
    domains = ["photos.example"]          # hosts the crawl may visit besides the start URLs'
    start_urls = ["https://photos.example/gallery/"]   # used when no -a url= is given
    items = "figure.gallery-item"         # CSS (or XPath starting with / or ( ): one image per item
    image_attrs = ["data-full-url", "href", "data-srcset", "src"]   # where to look, best first
    next_page = "a.next"                  # replaces the generic pagination rules
    detail_page = "a.photo-link"          # replaces the generic detail-page rules
    render = "browser"                    # static (default), browser or auto: docs/render.md
    rewrite = [["_thumb\\.", "_full."], ["\\?w=\\d+$", ""]]          # regex, replacement
    include = ["/uploads/"]               # image URLs must match one of these (regex) ...
    exclude = ["/avatars/", "\\.svg$"]    # ... and none of these
    [settings]                            # Scrapy settings for this site
    DOWNLOAD_DELAY = 0.5
    CONCURRENT_REQUESTS_PER_DOMAIN = 2

Pure: tomllib, re and parsel only, so profiles are validated without a crawler.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parsel import Selector

from imgcrawl import links, render

SITES_DIR = Path(__file__).resolve().parent

_LIST_KEYS = ("domains", "start_urls", "image_attrs", "include", "exclude")
_TEXT_KEYS = ("name", "items", "next_page", "detail_page", "render")
KNOWN_KEYS = frozenset(_LIST_KEYS + _TEXT_KEYS + ("rewrite", "settings", "description"))


class ProfileError(ValueError):
    """A profile that cannot be used; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class SiteProfile:
    name: str
    description: str = ""
    domains: tuple[str, ...] = ()
    start_urls: tuple[str, ...] = ()
    items: str | None = None
    image_attrs: tuple[str, ...] = ()
    next_page: str | None = None
    detail_page: str | None = None
    rewrite: tuple[tuple[re.Pattern, str], ...] = ()
    include: tuple[re.Pattern, ...] = ()
    exclude: tuple[re.Pattern, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    render: str | None = None  # how its pages are read (imgcrawl.render); -a render= wins

    def image_url(self, url: str) -> str | None:
        """``url`` rewritten by the rules, or None when include/exclude rule it out."""
        url = links.rewrite_url(url, self.rewrite)
        if self.include and not any(p.search(url) for p in self.include):
            return None
        if any(p.search(url) for p in self.exclude):
            return None
        return url


def builtin_profiles() -> dict[str, Path]:
    """Built-in profile names and their files."""
    return {path.stem: path for path in sorted(SITES_DIR.glob("*.toml"))}


def find_profile(name: str) -> SiteProfile:
    """The built-in profile ``name`` (``-a site=NAME``)."""
    known = builtin_profiles()
    if name not in known:
        raise ProfileError(f"unknown site profile {name}: known are {', '.join(known) or 'none'}")
    return load_profile(known[name])


def load_profile(path: str | Path) -> SiteProfile:
    """Read and validate a profile file; every problem is one ``ProfileError`` line."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {path} is not valid TOML: {exc}") from None
    return parse_profile(data, default_name=path.stem, source=str(path))


def parse_profile(data: dict[str, Any], default_name: str, source: str) -> SiteProfile:
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise ProfileError(
            f"profile {source}: unknown key {unknown[0]!r}; known are {', '.join(sorted(KNOWN_KEYS))}"
        )
    for key in _TEXT_KEYS + ("description",):
        if key in data and not isinstance(data[key], str):
            raise ProfileError(f"profile {source}: {key} must be a string")
    for key in _LIST_KEYS:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProfileError(f"profile {source}: {key} must be a list of strings")
    for key in ("items", "next_page", "detail_page"):
        if key in data:
            _check_selector(data[key], f"profile {source}: {key}")
    rules = data.get("rewrite", [])
    if not isinstance(rules, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(v, str) for v in r) for r in rules
    ):
        raise ProfileError(f'profile {source}: rewrite must be a list of ["regex", "replacement"] pairs')
    try:
        mode = render.parse_mode(data["render"]) if "render" in data else None
    except ValueError as exc:
        raise ProfileError(f"profile {source}: {exc}") from None
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise ProfileError(f"profile {source}: [settings] must be a table of Scrapy settings")
    return SiteProfile(
        name=data.get("name", default_name),
        description=data.get("description", ""),
        domains=tuple(data.get("domains", ())),
        start_urls=tuple(data.get("start_urls", ())),
        items=data.get("items"),
        image_attrs=tuple(data.get("image_attrs", ())),
        next_page=data.get("next_page"),
        detail_page=data.get("detail_page"),
        rewrite=tuple((_regex(p, f"profile {source}: rewrite"), r) for p, r in rules),
        include=tuple(_regex(p, f"profile {source}: include") for p in data.get("include", ())),
        exclude=tuple(_regex(p, f"profile {source}: exclude") for p in data.get("exclude", ())),
        settings=dict(settings),
        render=mode,
    )


def _regex(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ProfileError(f"{where}: bad regex {pattern!r}: {exc}") from None


def _check_selector(query: str, where: str) -> None:
    try:
        links.select(Selector(text="<html></html>"), query)
    except Exception as exc:  # cssselect and lxml raise several unrelated types
        raise ProfileError(f"{where}: bad selector {query!r}: {exc}") from None
