"""The image worker process: ``python -m imgcrawl.worker``, started by
:class:`imgcrawl.workerpool.ProcessWorkers`.

Reads jobs from stdin until EOF and writes one result per job, in order, to stdout, each a
length-prefixed pickle. Imports Pillow and :mod:`imgcrawl.imaging` only (no Scrapy, no
Twisted), so each worker stays small.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys

from imgcrawl import imaging

# What a worker may be asked to run, by name (the parent sends names, never code).
JOBS = {"process_image": imaging.process_image, "rethumb": imaging.rethumb}
HEADER = struct.Struct("<I")  # the length of the pickle that follows
# A bigger pipe takes a whole photo in one write (Linux; the default is 64 KiB).
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
READY = "ready"


def frame(obj) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything unpicklable is reported by its text
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def serve(stdin: int = 0, stdout: int = 1) -> None:
    """Run jobs from ``stdin`` until EOF; one result frame per job, in order."""
    # Ctrl-C reaches the whole process group: the parent finishes its in-flight images
    # gracefully, so the workers must not die under them. EOF on stdin is our signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import fcntl

        fcntl.fcntl(stdin, F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, OSError):
        pass
    reader = os.fdopen(stdin, "rb", buffering=PIPE_SIZE)
    writer = os.fdopen(stdout, "wb", buffering=0)
    sys.stdout = sys.stderr  # a stray print must not corrupt the result stream
    writer.write(frame(READY))
    while len(header := reader.read(HEADER.size)) == HEADER.size:
        name, args = pickle.loads(reader.read(HEADER.unpack(header)[0]))
        try:
            result = (True, JOBS[name](*args))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
            result = (False, _picklable(exc))
        writer.write(frame(result))


if __name__ == "__main__":
    serve()
