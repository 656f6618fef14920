"""Where the pipeline's Pillow and file work runs: worker processes fed by the reactor itself.

Why not ``concurrent.futures.ProcessPoolExecutor``: it moves every job through two helper
threads (queue feeder and result manager) that pickle and pipe each body while contending
for the GIL with the reactor thread. Here the reactor writes each job to a worker's stdin
(non-blocking, no thread) and reads the result from its stdout (:mod:`imgcrawl.worker` is
the other end). A worker that dies (a decoder crash on hostile input, the OOM killer) fails
only the jobs it held, with reason ``worker-crashed``, and is replaced.

Both pools offer ``submit(name, *args) -> Deferred`` and ``close() -> Deferred``.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor

from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from imgcrawl import imaging
from imgcrawl.worker import JOBS, READY

logger = logging.getLogger(__name__)

# Jobs written ahead to each worker, so it never idles while the busy reactor gets round
# to feeding it. The rest wait here, where whichever worker is free first takes them:
# written ahead, they would be tied to one worker (and fail with it if it dies).
DEPTH = 4


class WorkerCrashed(imaging.ImageError):
    def __init__(self, detail: str):
        super().__init__("worker-crashed", detail)


def run_in(executor: Executor, fn, *args) -> Deferred:
    """Submit to a thread pool; the Deferred fires back on the reactor thread."""
    from twisted.internet import reactor

    d: Deferred = Deferred()

    def done(future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            reactor.callFromThread(d.errback, Failure(exc))
        else:
            reactor.callFromThread(d.callback, future.result())

    executor.submit(fn, *args).add_done_callback(done)
    return d


class _Worker(Int32StringReceiver, protocol.ProcessProtocol):
    """One worker process. Jobs go to its stdin and results come from its stdout, each a
    pickle behind a 4-byte big-endian length: ``multiprocessing.connection.Connection``
    frames it so on the child's side, and this receiver (``!I``) reads the same bytes for
    anything under 2 GiB."""

    # Any result, however big (the default, 99999, drops a worker over a big one). Past
    # 2 GiB Connection switches to an 8-byte length this receiver cannot read: the worker
    # is dropped and its jobs fail as worker-crashed.
    MAX_LENGTH = 2**31 - 1

    def __init__(self, pool: ProcessWorkers):
        self.pool = pool
        self.pending: deque[Deferred] = deque()
        self.ready = False
        self.ended: Deferred = Deferred()

    def send(self, job: bytes, d: Deferred) -> None:
        self.pending.append(d)
        self.sendString(job)  # the transport is the process: this writes to its stdin

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.dataReceived(data)

    def stringReceived(self, data: bytes) -> None:
        message = pickle.loads(data)
        if message == READY:
            self.ready = True
        else:
            ok, value = message
            d = self.pending.popleft()
            d.callback(value) if ok else d.errback(Failure(value))
        self.pool._dispatch()

    def processEnded(self, reason: Failure) -> None:
        detail = f"image worker exited ({reason.value})"
        pending, self.pending = self.pending, deque()
        self.pool._ended(self, detail)
        for d in pending:
            d.errback(Failure(WorkerCrashed(detail)))
        self.ended.callback(None)


class ProcessWorkers:
    """``size`` worker processes (``IMGCRAWL_WORKER_POOL=process``, the default)."""

    def __init__(self, size: int):
        from twisted.internet import reactor

        self.reactor = reactor
        self.queue: deque[tuple[bytes, Deferred]] = deque()
        self.workers: list[_Worker] = []
        self.closing = False
        self.broken: str | None = None
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        worker = _Worker(self)
        # The child finds imgcrawl where we did, also inside scrapyd's project egg.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.reactor.spawnProcess(
            worker, sys.executable, [sys.executable, "-m", "imgcrawl.worker"],
            env=env, childFDs={0: "w", 1: "r", 2: 2},
        )
        self.workers.append(worker)

    def submit(self, name: str, *args) -> Deferred:
        d: Deferred = Deferred()
        if self.broken:
            d.errback(Failure(WorkerCrashed(self.broken)))
            return d
        self.queue.append((pickle.dumps((name, args), protocol=pickle.HIGHEST_PROTOCOL), d))
        self._dispatch()
        return d

    def _dispatch(self) -> None:
        """Hand waiting jobs to the least busy workers, up to DEPTH each."""
        while self.queue and self.workers:
            worker = min(self.workers, key=lambda w: len(w.pending))
            if len(worker.pending) >= DEPTH:
                return
            worker.send(*self.queue.popleft())

    def _ended(self, worker: _Worker, detail: str) -> None:
        self.workers.remove(worker)
        if self.closing:
            return
        if not worker.ready:
            # It died before it could start: a broken install, not a bad image. Say so
            # once, fail what waits, and do not respawn in a loop.
            self.broken = f"{detail} before it started (see its error above)"
            logger.error("imgcrawl: %s", self.broken)
            while self.queue:
                self.queue.popleft()[1].errback(Failure(WorkerCrashed(self.broken)))
            return
        logger.warning("imgcrawl: %s; its images fail as worker-crashed; starting another", detail)
        self._spawn()
        self._dispatch()

    def close(self, timeout: float = 30) -> Deferred:
        """Workers finish their jobs and exit (stdin closed); killed after ``timeout`` s."""
        self.closing = True
        workers = list(self.workers)
        for worker in workers:
            worker.transport.closeChildFD(0)

        def kill() -> None:
            for worker in workers:
                try:
                    worker.transport.signalProcess("KILL")
                except error.ProcessExitedAlready:
                    pass

        timer = self.reactor.callLater(timeout, kill)
        done = DeferredList([w.ended for w in workers])
        done.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return done


class ThreadWorkers:
    """``size`` threads in this process (``IMGCRAWL_WORKER_POOL=thread``)."""

    def __init__(self, size: int):
        self.executor = ThreadPoolExecutor(size, thread_name_prefix="imgcrawl-image")

    def submit(self, name: str, *args) -> Deferred:
        return run_in(self.executor, JOBS[name], *args)

    def close(self) -> Deferred:
        self.executor.shutdown(wait=True)
        return succeed(None)


class BatchingThread:
    """One thread whose calls are sent over in batches: the calls made within ``window``
    seconds (a page's "already stored?" lookups, the records of the images finished
    meanwhile) cross in one thread hop, instead of paying the reactor thread a hand-off
    (queue locks, a waker write, GIL switches) for each. All calls run on that one thread,
    in the order made: what they use (an SQLite connection) belongs to one thread."""

    def __init__(self, name: str, window: float = 0.02):
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.window = window
        self.calls: list[tuple] = []

    def call(self, fn, *args) -> Deferred:
        from twisted.internet import reactor

        d: Deferred = Deferred()
        if not self.calls:
            reactor.callLater(self.window, self._flush)
        self.calls.append((fn, args, d))
        return d

    def _flush(self) -> None:
        calls, self.calls = self.calls, []

        def run_all() -> list[tuple[bool, object]]:
            results = []
            for fn, args, _ in calls:
                try:
                    results.append((True, fn(*args)))
                except Exception as exc:  # noqa: BLE001 - each caller gets its own failure
                    results.append((False, exc))
            return results

        def deliver(results: list[tuple[bool, object]]) -> None:
            for (_, _, d), (ok, value) in zip(calls, results):
                d.callback(value) if ok else d.errback(Failure(value))

        run_in(self.executor, run_all).addCallback(deliver)

    def close(self, fn=None) -> None:
        """Run ``fn`` last on the thread (closing what it owns), then stop the thread."""
        if fn is not None:
            self.executor.submit(fn).result()
        self.executor.shutdown(wait=True)
