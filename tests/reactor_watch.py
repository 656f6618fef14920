"""What a crawl subprocess does on its reactor thread: instrumentation, not a mock.

``tests/test_promises.py`` copies this file as ``sitecustomize.py`` into a directory put
first on the crawl's PYTHONPATH, with ``REACTOR_WATCH_DIR`` (where to report) and
``REACTOR_WATCH_STORE`` (the crawl's ``IMAGES_STORE``) in its environment. Python imports it
at startup, on the main thread. Only the first process installs it: it sets
``REACTOR_WATCH_CHILD``, which the image worker processes inherit, so they run unwatched.

Scrapy runs the reactor on the main thread of that process (the report says which thread
Twisted registered as its I/O thread, so the test can check). On that thread it records,
as violations:

* ``pillow``: ``Image.open``, ``load``, ``save``, ``thumbnail``, ``resize``, ``convert``, ``draft``;
* ``store-write``: a file under the store opened for writing (``os.open``, ``open``), written
  (``os.write``, a file object's ``write``), renamed or removed; the manifest excepted:
  ``manifest.jsonl`` and the crawl's journal under ``crawls/pending/`` (Scrapy's feed
  exporter writes each line on the reactor thread; no claim covers it);
* ``store-stat``: ``stat``/``lstat``/``exists`` of a file under ``full/`` or ``thumbs/`` (the
  "already stored?" check; resolving the store's directories is not counted);
* ``index``: an index lookup or record (``SELECT``, ``INSERT``, ``BEGIN`` ...); opening the
  SQLite connection (``PRAGMA``, ``CREATE``) at spider open is not counted;
* ``index-close``: closing the SQLite connection (the index's: under the store's ``.imgcrawl/``);
* ``file-write``: a file object's ``write`` to any other regular file (a temp file);
* ``blocking-join``: ``Thread.join`` keeping the thread waiting over ``JOIN_LIMIT`` s.

Closing the SQLite connection sleeps ``SLOW_CLOSE`` s (a slow disk's checkpoint), so a close
the reactor thread waits for shows up as a blocking join. The same calls on other threads
are counted in ``off_reactor`` (proof the wrappers were live). The report is written as JSON
to ``$REACTOR_WATCH_DIR/watch-<pid>.json`` when the process exits.
"""

from __future__ import annotations

import atexit
import collections
import functools
import io
import json
import os
import re
import stat
import sys
import threading
import time

JOIN_LIMIT = 0.5  # seconds
SLOW_CLOSE = 1.0  # seconds
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Relative to the store: the manifest and the crawl's journal (made at its first line).
EXEMPT = re.compile(r"manifest\.jsonl|crawls|crawls/pending|crawls/pending/\.?manifest-[^/]+\.jsonl")
FILE_TYPES = {io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom, io.FileIO}
INDEX_WORK = {"SELECT", "INSERT", "REPLACE", "UPDATE", "DELETE", "BEGIN"}
# Image.Image methods watched, besides Image.open and ImageFile.load (decoding, in subclasses).
PILLOW_METHODS = ("load", "save", "thumbnail", "resize", "convert", "draft")


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def caller_stack(skip: int = 2, depth: int = 8) -> list[str]:
    frame, stack = sys._getframe(skip), []
    while frame is not None and len(stack) < depth:
        stack.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        frame = frame.f_back
    return stack


class Checked:
    """``original`` with ``check`` run first. An object, not a function: a builtin such as
    ``open`` kept as a class attribute (Twisted's ``openfile = open``) must not bind."""

    def __init__(self, original, check):
        self.original = original
        self.check = check

    def __call__(self, *args, **kwargs):
        self.check(*args, **kwargs)
        return self.original(*args, **kwargs)


class Watch:
    def __init__(self, out_dir: str, store: str):
        self.out_dir = out_dir
        self.store = os.path.abspath(store)
        self.main_ident = threading.get_ident()  # sitecustomize runs on the main thread
        self.violations: list[dict] = []
        self.off_reactor: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    # -- recording ---------------------------------------------------------------------

    def saw(self, kind: str, detail: str) -> None:
        if threading.get_ident() == self.main_ident:
            self.violations.append({"kind": kind, "detail": detail, "stack": caller_stack(2, 10)})
        else:
            with self.lock:
                self.off_reactor[kind] += 1

    def relative(self, path) -> str | None:
        """``path`` relative to the store, or None when it is outside (or not a path)."""
        if isinstance(path, int):
            path = fd_path(path)
        try:
            path = os.path.abspath(os.fsdecode(os.fspath(path)))
        except TypeError:
            return None
        if path == self.store:
            return "."
        if path.startswith(self.store + os.sep):
            return path[len(self.store) + 1:]
        return None

    def written(self, path, how: str) -> None:
        rel = self.relative(path)
        if rel is not None and not EXEMPT.fullmatch(rel):
            self.saw("store-write", f"{how} {rel}")

    def statted(self, path, how: str) -> None:
        rel = self.relative(path)
        if rel is None:
            return
        parts = rel.split(os.sep)
        # A file: full/<name> or thumbs/<size>/<name>; not the directories store_path resolves.
        if (parts[0] == "full" and len(parts) >= 2) or (parts[0] == "thumbs" and len(parts) >= 3):
            self.saw("store-stat", f"{how} {rel}")

    # -- the instrumentation -----------------------------------------------------------

    def install(self) -> None:
        self._wrap_os()
        self._wrap_open()
        self._wrap_pillow()
        self._wrap_sqlite()
        self._wrap_join()
        sys.setprofile(self._profile)  # this (main) thread only: file objects' writes
        atexit.register(self.report)

    def _wrap(self, owner, name: str, check) -> None:
        original = getattr(owner, name)
        if isinstance(owner, type):  # a method: the wrapper must bind like one

            @functools.wraps(original)
            def wrapper(*args, **kwargs):
                check(*args, **kwargs)
                return original(*args, **kwargs)
        else:  # a module's function: like a builtin, it must not bind when kept on a class
            wrapper = functools.update_wrapper(Checked(original, check), original)
        setattr(owner, name, wrapper)
        if owner is os:  # keep os.supports_* truthful for the wrapped functions
            for group in (os.supports_dir_fd, os.supports_fd, os.supports_follow_symlinks):
                if original in group:
                    group.add(wrapper)

    def _wrap_os(self) -> None:
        def opened(path, flags, *args, **kwargs):
            if flags & WRITE_FLAGS:
                self.written(path, "os.open")

        def wrote(fd, data):
            self.written(fd, "os.write")

        def moved(src, dst, *args, **kwargs):
            self.written(src, "rename from")
            self.written(dst, "rename to")

        def removed(path, *args, **kwargs):
            self.written(path, "unlink")

        self._wrap(os, "open", opened)
        self._wrap(os, "write", wrote)
        for name in ("replace", "rename"):
            self._wrap(os, name, moved)
        for name in ("unlink", "remove"):
            self._wrap(os, name, removed)
        for name in ("stat", "lstat", "access"):
            self._wrap(os, name, lambda path, *a, _how=name, **k: self.statted(path, _how))

    def _wrap_open(self) -> None:
        import builtins

        def opened(file, mode="r", *args, **kwargs):
            if not isinstance(file, int) and any(c in mode for c in "wax+"):
                self.written(file, f"open({mode!r})")

        self._wrap(io, "open", opened)
        builtins.open = io.open

    def _wrap_pillow(self) -> None:
        from PIL import Image, ImageFile

        for owner, name in ((Image, "open"), (ImageFile.ImageFile, "load"),
                            *((Image.Image, n) for n in PILLOW_METHODS)):
            label = f"{owner.__name__}.{name}"
            self._wrap(owner, name, lambda *a, _label=label, **k: self.saw("pillow", _label))

    def _wrap_sqlite(self) -> None:
        import sqlite3

        watch = self

        class WatchedConnection(sqlite3.Connection):
            def execute(self, sql, *args):
                if sql.split(None, 1)[0].upper() in INDEX_WORK:
                    watch.saw("index", sql.split("(")[0][:60])
                return super().execute(sql, *args)

            def close(self):
                watch.saw("index-close", "close")
                time.sleep(SLOW_CLOSE)
                super().close()

        connect = sqlite3.connect

        def watched_connect(database, *args, **kwargs):
            # The index (IMGCRAWL_INDEX's default, under the store), not the manifest merge's
            # scratch database.
            rel = watch.relative(database) or ""
            if rel.startswith(".imgcrawl" + os.sep):
                kwargs.setdefault("factory", WatchedConnection)
            return connect(database, *args, **kwargs)

        sqlite3.connect = functools.update_wrapper(Checked(watched_connect, lambda *a, **k: None), connect)

    def _wrap_join(self) -> None:
        join = threading.Thread.join
        watch = self

        @functools.wraps(join)
        def watched_join(self, timeout=None):
            if threading.get_ident() != watch.main_ident:
                return join(self, timeout)
            started = time.monotonic()
            try:
                return join(self, timeout)
            finally:
                waited = time.monotonic() - started
                if waited > JOIN_LIMIT:
                    watch.saw("blocking-join", f"{self.name} for {waited:.2f} s")

        threading.Thread.join = watched_join

    def _profile(self, frame, event, arg) -> None:
        # Calls made here are not profiled (the interpreter turns profiling off meanwhile).
        if event != "c_call" or arg.__name__ not in ("write", "writelines"):
            return
        file = getattr(arg, "__self__", None)
        if type(file) not in FILE_TYPES:
            return
        try:
            fd = file.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return  # stderr, a pipe, a socket
        except (OSError, ValueError):
            return
        path = fd_path(fd)
        rel = self.relative(path)
        if rel is None:
            self.violations.append({"kind": "file-write", "detail": f"{arg.__qualname__} {path}",
                                    "stack": caller_stack(1)})
        elif not EXEMPT.fullmatch(rel):
            self.violations.append({"kind": "store-write", "detail": f"{arg.__qualname__} {rel}",
                                    "stack": caller_stack(1)})

    def report(self) -> None:
        sys.setprofile(None)
        threadable = sys.modules.get("twisted.python.threadable")
        data = {
            "pid": os.getpid(),
            "argv": sys.argv,
            "main_thread": self.main_ident,
            "reactor_thread": getattr(threadable, "ioThread", None),
            "violations": self.violations,
            "off_reactor": dict(self.off_reactor),
        }
        with open(os.path.join(self.out_dir, f"watch-{os.getpid()}.json"), "w") as out:
            json.dump(data, out, indent=1)


if __name__ == "sitecustomize" and os.environ.get("REACTOR_WATCH_DIR") and not os.environ.get("REACTOR_WATCH_CHILD"):
    os.environ["REACTOR_WATCH_CHILD"] = "1"  # the image worker processes inherit it: unwatched
    Watch(os.environ["REACTOR_WATCH_DIR"], os.environ["REACTOR_WATCH_STORE"]).install()
