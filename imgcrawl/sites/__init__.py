"""Declarative site profiles: a TOML file per site, no code.

Built-in profiles are the ``*.toml`` files in this package (``-a site=NAME``), read as
package resources, so they are found inside a zipped egg (scrapyd) too; a user's own file
is ``-a profile=path/to/site.toml``. Every key is optional and documented in
``docs/sites.md``::

    name = "mysite"                       # defaults to the file name
    description = "Photo pages of mysite" # one line, logged when the crawl starts
    domains = ["photos.example"]          # hosts the crawl may visit besides the start URLs'
    start_urls = ["https://photos.example/gallery/"]   # used when no -a url= is given
    items = "figure.gallery-item"         # CSS (or XPath starting with / or ( ): one image per item
    image_attrs = ["data-zoom-src"]       # looked up first, best first; then the built-in rules
    next_page = "a.next"                  # followed as well as the generic pagination rules
    detail_page = "a.photo-link"          # followed as well as the generic detail-page rules
    replace = ["next_page"]               # these keys replace the built-in rules instead
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
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from parsel import Selector

from imgcrawl import links, render

_LIST_KEYS = ("domains", "start_urls", "image_attrs", "include", "exclude", "replace")
_TEXT_KEYS = ("name", "description", "items", "next_page", "detail_page", "render")
KNOWN_KEYS = frozenset(_LIST_KEYS + _TEXT_KEYS + ("rewrite", "settings"))
# Keys that add to imgcrawl's built-in rules, unless ``replace`` names them.
REPLACEABLE = ("image_attrs", "next_page", "detail_page")


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
    replace: frozenset[str] = frozenset()  # of REPLACEABLE: these replace the built-in rules
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


def builtin_profiles() -> dict[str, Traversable]:
    """Built-in profile names and their package resources."""
    files = resources.files(__name__)
    return {entry.name.removesuffix(".toml"): entry for entry in sorted(files.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".toml")}


def find_profile(name: str) -> SiteProfile:
    """The built-in profile ``name`` (``-a site=NAME``)."""
    known = builtin_profiles()
    if name not in known:
        raise ProfileError(f"unknown site profile {name}: known are {', '.join(known) or 'none'}")
    return _read(known[name], name, f"imgcrawl/sites/{name}.toml")


def load_profile(path: str | Path) -> SiteProfile:
    """Read and validate a profile file; every problem is one ``ProfileError`` line."""
    path = Path(path)
    return _read(path, path.stem, str(path))


def _read(file: Path | Traversable, default_name: str, source: str) -> SiteProfile:
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"cannot read profile {source}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {source} is not valid TOML: {exc}") from None
    return parse_profile(data, default_name=default_name, source=source)


def parse_profile(data: dict[str, Any], default_name: str, source: str) -> SiteProfile:
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise ProfileError(
            f"profile {source}: unknown key {unknown[0]!r}; known are {', '.join(sorted(KNOWN_KEYS))}"
        )
    for key in _TEXT_KEYS:
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
    unknown = sorted(set(data.get("replace", ())) - set(REPLACEABLE))
    if unknown:
        raise ProfileError(f"profile {source}: replace: {unknown[0]!r} has no built-in rules to replace; "
                           f"it may name {', '.join(REPLACEABLE)}")
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
        replace=frozenset(data.get("replace", ())),
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
