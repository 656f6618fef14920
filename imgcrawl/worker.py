"""The image worker process: ``python -m imgcrawl.worker``, started by
:class:`imgcrawl.workerpool.ProcessWorkers`.

Reads jobs from stdin until EOF, each a pickle (which marks its own end, so ``pickle.load``
takes one at a time from a buffered stream), and writes one result per job, in order, to
stdout, each a pickle sent by :class:`multiprocessing.connection.Connection`: behind a
4-byte big-endian length, as the parent's Twisted ``Int32StringReceiver`` reads it from the
pieces the reactor receives. Imports Pillow, numpy and :mod:`imgcrawl.imaging` only (no Scrapy,
no Twisted), so each worker stays small.
"""

from __future__ import annotations

import os
import pickle
import signal
from multiprocessing.connection import Connection

from imgcrawl import imaging

# What a worker may be asked to run, by name (the parent sends names, never code).
JOBS = {"process_image": imaging.process_image, "rethumb": imaging.rethumb}
# A bigger pipe takes a whole photo in one write, so the parent's non-blocking writes do not
# come back to the reactor piecemeal (Linux; the default is 64 KiB).
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
READY = "ready"
# What stops a crawl gracefully; a worker outlives them to finish its jobs.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything unpicklable is reported by its text
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def serve(stdin: int = 0, stdout: int = 1) -> None:
    """Run jobs from ``stdin`` until EOF; one result per job, in order."""
    # Ctrl-C, systemd's stop and ``kill -- -PGID`` reach the whole process group: the parent
    # then stops gracefully, finishing the images it has in flight, so the workers must not
    # die under them. EOF on stdin is our signal: the parent closes it when the crawl
    # closes, and we finish every job written before it (a worker still busy after the
    # pool's close timeout is killed). The parent starts us with these
    # signals blocked (see ProcessWorkers._spawn), so one sent while Python was still
    # starting waits, and is dropped here instead of killing a worker that never said READY.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        import fcntl

        fcntl.fcntl(stdin, F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, OSError):
        pass
    # The streams move to private descriptors; fds 0 and 1 become /dev/null and stderr, so
    # a stray print or read (ours, a library's, C code's) cannot corrupt them.
    # Jobs are read through a small buffer: a job's image bytes are read straight into
    # place, and ``pickle.load`` peeks (copies) no more than the buffer holds.
    jobs, results = os.fdopen(os.dup(stdin), "rb"), Connection(os.dup(stdout), readable=False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, stdin)
    os.close(devnull)
    os.dup2(2, stdout)
    # phash's numpy, which it loads lazily (the parent imports this module, not numpy):
    # imported before READY, so a missing one is a broken install the pool reports once,
    # not an "undecodable" failure per image.
    import numpy  # noqa: F401, PLC0415

    results.send(READY)
    while True:
        try:
            name, args = pickle.load(jobs)
        except EOFError:
            return
        try:
            result = (True, JOBS[name](*args))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
            result = (False, _picklable(exc))
        results.send(result)


if __name__ == "__main__":
    serve()
