"""The live progress display on a terminal (rich), with the crawl's log lines printed above it.

Used only when stderr is a terminal (:func:`wanted`); rich is imported when a display
starts, so a crawl whose stderr is a pipe or a file never loads it.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import sys

from imgcrawl.logformatter import logs_at


def wanted(settings) -> bool:
    """``IMGCRAWL_LIVE_PROGRESS`` is on, stderr is a terminal that moves its cursor, and the
    log shows INFO (``-L WARNING`` asks for quiet)."""
    return (
        settings.getbool("IMGCRAWL_LIVE_PROGRESS")
        and sys.stderr.isatty()
        and os.environ.get("TERM") != "dumb"
        and logs_at(settings, logging.INFO)
    )


class AboveDisplay(io.TextIOBase):
    """A text stream whose lines are printed above the live display, each as one line that
    the terminal wraps (copied, a long URL stays whole)."""

    def __init__(self, console, text_class):
        self.console = console
        self.text_class = text_class
        self.partial = ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.console.print(self.text_class(line), soft_wrap=True)
        return len(text)

    def isatty(self) -> bool:
        return True


class LiveDisplay:
    """A few lines at the bottom of the terminal, redrawn by :meth:`update`.

    While it shows, ``sys.stderr`` and the log handlers that wrote to it write above it.
    """

    def __init__(self, title: str):
        self.title = title
        self.live = None
        self.stderr = sys.stderr
        self.handlers: list[logging.StreamHandler] = []  # writing above the display

    def start(self) -> None:
        from rich.console import Console  # noqa: PLC0415 - see the module docstring
        from rich.live import Live  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        self.text_class = Text
        self.stderr = stderr = sys.stderr
        console = Console(file=stderr)
        self.live = Live(console=console, auto_refresh=False, transient=True,
                         redirect_stdout=False, redirect_stderr=False)
        self.live.start()
        atexit.register(self.stop)  # a forced exit (a second Ctrl-C) must not leave the cursor hidden
        above = AboveDisplay(console, Text)
        # Scrapy's root handler kept the stream it was made with.
        self.handlers = [h for h in logging.root.handlers
                         if type(h) is logging.StreamHandler and h.stream is stderr]
        for handler in self.handlers:
            handler.setStream(above)
        sys.stderr = above

    def update(self, status: list[str], waiting: list[str]) -> None:
        Text = self.text_class  # noqa: N806
        text = Text("\n").join(
            [Text(self.title, style="bold"), *map(Text, status), *(Text(line, style="yellow") for line in waiting)]
        )
        text.overflow = "fold"  # a URL longer than the terminal is wide goes on, whole, on the next line
        self.live.update(text, refresh=True)

    def stop(self) -> None:
        if self.live is None:
            return
        for handler in self.handlers:
            handler.setStream(self.stderr)
        sys.stderr = self.stderr
        self.live.stop()
        self.live = None
