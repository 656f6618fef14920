"""``imgcrawl``: crawl galleries from any directory (``imgcrawl crawl URL``), or the demo.

``imgcrawl crawl`` is ``scrapy crawl gallery`` with the project's settings, wherever it runs
(no scrapy.cfg needed): its options become ``-a``/``-s`` arguments of imgcrawl's crawl
command (:mod:`imgcrawl.commands.crawl`), so both exit with the same status
(:mod:`imgcrawl.exitstatus`). Scrapy is imported only once a command runs: ``--help`` and
usage errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from imgcrawl import __version__, render

SETTINGS_MODULE = "imgcrawl.settings"
SPIDER = "gallery"

DESCRIPTION = """\
Crawl image galleries: every image at full size, stored byte-exact, with thumbnails,
a manifest (manifest.jsonl) and a contact sheet (index.html).

commands:
  crawl   crawl galleries into a directory        imgcrawl crawl https://example.com/gallery -o photos
  demo    crawl a generated gallery, offline      imgcrawl demo
"""

EXIT_STATUS = """\
exit status:
  0  the crawl finished (images or pages that failed are reported, not fatal)
  1  the crawl did not finish: interrupted, or an unexpected error
  2  bad usage, a bad argument or a bad setting
  3  nothing crawled: every start URL was refused, unreachable or an HTTP error
  4  the image store is not writable, is full or does not answer
"""

CRAWL_EXAMPLES = """\
examples:
  imgcrawl crawl https://example.com/gallery
  imgcrawl crawl https://example.com/gallery -o photos --max-images 500
  imgcrawl crawl https://blog.example.com/ --site wordpress -s DOWNLOAD_DELAY=0.5
  imgcrawl crawl https://example.com/a https://example.com/b -L WARNING

"""


def name_value(flag: str):
    """An argparse type for ``NAME=VALUE``, refused in one line otherwise."""

    def parse(text: str) -> str:
        name, equals, _ = text.partition("=")
        if not equals or not name.strip():
            raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE, e.g. {flag} NAME=VALUE")
        return text

    return parse


# Spider arguments that imgcrawl crawl has an option for: two ways to say one thing would conflict.
OPTION_FOR = {"url": "URL...", "max_images": "--max-images", "max_pages": "--max-pages",
              "site": "--site", "profile": "--profile", "render": "--render"}


def spider_argument(text: str) -> str:
    text = name_value("-a")(text)
    name = text.partition("=")[0].strip()
    if name in OPTION_FOR:
        raise argparse.ArgumentTypeError(f"use {OPTION_FOR[name]}, not -a {name}=...")
    return text


def start_url(text: str) -> str:
    from imgcrawl.links import is_absolute_http  # noqa: PLC0415 - parsel et al., only once a URL is given

    if not is_absolute_http(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an absolute http(s) URL, e.g. https://example.com/gallery")
    if "," in text:  # the spider's -a url= separates URLs with commas
        raise argparse.ArgumentTypeError(f"{text!r} has a comma: write it as %2C")
    return text


def count(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return number


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="imgcrawl", usage="imgcrawl [-h] [--version] COMMAND ...", description=DESCRIPTION, epilog=EXIT_STATUS + "\ndocs: docs/cli.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"imgcrawl {__version__}")
    # The commands are listed, with examples, in DESCRIPTION.
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS,
                                  prog="imgcrawl")

    crawl = commands.add_parser(
        "crawl", help="crawl galleries into a directory", usage="imgcrawl crawl URL [URL ...] [-o DIR] [options]",
        description=(
            "Crawl the galleries at URL... and store their images in DIR: the crawl of\n"
            "'scrapy crawl gallery', with the project's settings, from any directory."),
        epilog=CRAWL_EXAMPLES + EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    crawl.add_argument("urls", nargs="+", type=start_url, metavar="URL", help="a gallery to crawl")
    crawl.add_argument("-o", "--output", metavar="DIR", default="images",
                       help="where images, thumbnails, manifest and contact sheet go (default: ./images)")
    crawl.add_argument("--max-images", type=count, metavar="N", help="take at most N images (stored, already stored or failed)")
    crawl.add_argument("--max-pages", type=count, metavar="N", help="crawl at most N pages")
    profile = crawl.add_mutually_exclusive_group()
    profile.add_argument("--site", metavar="NAME", help="a built-in site profile, e.g. wordpress")
    profile.add_argument("--profile", metavar="FILE", help="a site profile file (TOML)")
    crawl.add_argument("--render", choices=render.RENDER_MODES, metavar="MODE",
                       help="gallery pages as served (static, the default), rendered in headless Chromium "
                            "(browser), or rendered where they look built by scripts (auto): docs/render.md")
    crawl.add_argument("-s", "--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                       type=name_value("-s"), help="a Scrapy or imgcrawl setting (repeatable)")
    crawl.add_argument("-a", dest="spider_args", action="append", default=[], metavar="NAME=VALUE",
                       type=spider_argument, help="any other spider argument (repeatable)")
    crawl.add_argument("-L", "--loglevel", metavar="LEVEL", help="log level: DEBUG, INFO (default), WARNING, ERROR")
    crawl.add_argument("--logfile", metavar="FILE", help="write the log to FILE instead of stderr")

    demo = commands.add_parser(
        "demo", help="crawl a generated gallery, offline",
        description="Serve a generated gallery on 127.0.0.1 and crawl it: no network needed.",
    )
    demo.add_argument("--store", default="demo-images", help="where to put images (default: %(default)s)")
    demo.add_argument("--pages", type=count, default=3, help="gallery pages (default: %(default)s)")
    return top


def scrapy_crawl_args(args: argparse.Namespace) -> list[str]:
    """``imgcrawl crawl``'s options as ``scrapy crawl gallery`` arguments."""
    argv = ["crawl", SPIDER, "-a", "url=" + ",".join(args.urls), "-s", f"IMAGES_STORE={args.output}"]
    for name in ("max_images", "max_pages", "site", "profile", "render"):
        if getattr(args, name) is not None:
            argv += ["-a", f"{name}={getattr(args, name)}"]
    for value in args.spider_args:
        argv += ["-a", value]
    for value in args.settings:
        argv += ["-s", value]
    if args.loglevel:
        argv += ["-L", args.loglevel]
    if args.logfile:
        argv += ["--logfile", args.logfile]
    return argv


def crawl_settings():
    """The settings ``imgcrawl crawl`` and ``demo`` start from: the project's, as ``scrapy
    crawl gallery`` has them, from whatever directory (a scrapy.cfg there is not read)."""
    os.environ["SCRAPY_SETTINGS_MODULE"] = SETTINGS_MODULE  # also tells Scrapy it is in a project
    from scrapy.utils.project import get_project_settings  # noqa: PLC0415

    return get_project_settings()


def run_crawl(args: argparse.Namespace) -> int:
    from scrapy.cmdline import execute  # noqa: PLC0415

    try:
        execute(["imgcrawl", *scrapy_crawl_args(args)], crawl_settings())
    except SystemExit as done:  # execute() always ends with sys.exit(the command's status)
        return done.code if isinstance(done.code, int) else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "demo":
        from imgcrawl.demo import run_demo  # noqa: PLC0415

        return run_demo(crawl_settings(), Path(args.store), args.pages)
    return run_crawl(args)


if __name__ == "__main__":
    sys.exit(main())
