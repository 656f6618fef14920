"""The gallery spider's ``-a`` arguments: each checked, each refused in one line with an
example of a good one. Pure (no crawler needed)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from imgcrawl import links, sites


class BadArgument(ValueError):
    """A spider argument that is missing or malformed; its message is the one line shown."""


def missing_url(example: str) -> str:
    return f"missing -a url=...: give the gallery to crawl, e.g. {example}"


def parse_urls(value: str | None, example: str) -> list[str]:
    if not value or not value.strip():
        raise BadArgument(missing_url(example))
    urls = [u.strip() for u in value.split(",") if u.strip()]
    for url in urls:
        if not links.is_absolute_http(url):
            raise BadArgument(
                f"bad -a url={url!r}: need an absolute http(s) URL, e.g. {example}"
            )
    return urls


def parse_count(name: str, value: Any, default: int | None) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        number = -1
    if number < 1:
        raise BadArgument(
            f"bad -a {name}={value!r}: need a whole number of at least 1, e.g. -a {name}=100"
        )
    return number


def init_parameters(cls: type, base: type, extra: Iterable[str] = ()) -> list[str]:
    """The ``-a`` names a spider class takes: the named ``__init__`` parameters of ``cls``
    and of its bases down to ``base``, then ``extra``."""
    names = [
        p.name
        for klass in reversed(cls.__mro__)
        if issubclass(klass, base) and "__init__" in vars(klass)
        for p in inspect.signature(vars(klass)["__init__"]).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return list(dict.fromkeys([*names, *extra]))


def check_known(given: Iterable[str], known: list[str]) -> None:
    """Refuse a mistyped ``-a`` name; ``_``-prefixed ones (scrapyd's ``_job``) are fine."""
    for name in given:
        if not name.startswith("_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean -a {close[0]}=...? " if close else ""
            raise BadArgument(f"unknown -a {name}=...: {hint}known arguments: {', '.join(known)}")


def parse_profile_args(site: str | None, profile: str | None, default: str | None) -> sites.SiteProfile | None:
    """The site profile named by ``-a site=NAME`` or ``-a profile=FILE``, else ``default``."""
    if site and profile:
        raise BadArgument(
            f"give -a site=NAME or -a profile=FILE, not both (got site={site!r}, profile={profile!r}); "
            "e.g. -a site=wordpress or -a profile=mysite.toml"
        )
    if profile is not None:
        try:
            return sites.load_profile(profile)
        except sites.ProfileError as exc:
            raise BadArgument(f"bad -a profile={profile!r}: {exc}; e.g. -a profile=mysite.toml") from None
    name = site if site is not None else default
    if name is None:
        return None
    try:
        return sites.find_profile(name.strip())
    except sites.ProfileError as exc:
        example = next(iter(sites.builtin_profiles()), "NAME")
        raise BadArgument(f"bad -a site={name!r}: {exc}; e.g. -a site={example}") from None


@dataclass
class Arguments:
    """What the gallery spider's arguments say; ``error`` is the one line when one is bad."""

    start_urls: list[str] = field(default_factory=list)
    profile: sites.SiteProfile | None = None
    max_pages: int | None = None
    max_images: int | None = None
    url_missing: bool = False  # no -a url and no start URLs: a distributed worker may still get some
    error: str | None = None


def parse_arguments(
    url: str | None, max_pages: Any, max_images: Any, site: str | None, profile: str | None, *,
    given: Iterable[str], known: list[str], default_profile: str | None, start_urls: list[str], example: str,
) -> Arguments:
    """Check every argument; ``given`` are the names of the other ``-a`` arguments."""
    try:
        check_known(given, known)
        args = Arguments(profile=parse_profile_args(site, profile, default_profile))
        if args.profile and args.profile.start_urls and not start_urls:
            start_urls = list(args.profile.start_urls)
        args.url_missing = url is None and not start_urls
        args.start_urls = [] if args.url_missing else parse_urls(url, example) if url is not None else list(start_urls)
        args.max_pages = parse_count("max_pages", max_pages, None)
        args.max_images = parse_count("max_images", max_images, None)
        return args
    except BadArgument as exc:
        return Arguments(error=str(exc))
