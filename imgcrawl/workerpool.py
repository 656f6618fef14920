"""Where the pipeline's Pillow and file work runs: worker processes fed by the reactor itself.

Why not ``concurrent.futures.ProcessPoolExecutor``: it moves every job through two helper
threads (queue feeder and result manager) that pickle and pipe each body while contending
for the GIL with the reactor thread. Here the reactor writes each job to a worker's stdin
(non-blocking, no thread) and reads the result from its stdout (:mod:`imgcrawl.worker` is
the other end). A worker that dies (a decoder crash on hostile input, the OOM killer, a
stray ``kill``) is replaced, and the jobs it held go to the next free worker: a job that
takes down a second worker too fails, with reason ``worker-crashed``.

Both pools offer ``submit(name, *args) -> Deferred`` and ``close() -> Deferred``.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
from collections import deque
from collections.abc import Callable

from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from imgcrawl import imaging
from imgcrawl.failures import forget_frames
from imgcrawl.worker import JOBS, READY, STOP_SIGNALS

logger = logging.getLogger(__name__)

# Jobs written ahead to each worker, so it never idles while the busy reactor gets round
# to feeding it. The rest wait here, where whichever worker is free first takes them:
# written ahead, they would be tied to one worker (and fail with it if it dies).
DEPTH = 4


# Workers a job may take down with it before it fails as worker-crashed. A worker killed
# from outside (the OOM killer, a stray kill) takes innocent jobs with it: a failed image
# is final (a crawl resumed from its JOBDIR does not fetch it again: media requests skip
# the scheduler, and the page that named it is not crawled again), so they get one more
# try. A job whose input crashes the decoder crashes it again: two are enough to say so.
MAX_CRASHES = 2


class WorkerCrashed(imaging.ImageError):
    def __init__(self, detail: str):
        super().__init__("worker-crashed", detail)


class _Job:
    """A call waiting for, or held by, a worker: kept until its result is in, so a worker
    that dies does not take it along."""

    __slots__ = ("call", "d", "crashes")

    def __init__(self, call: tuple[str, tuple], d: Deferred):
        self.call = call
        self.d = d
        self.crashes = 0  # workers that died while running it


class _Worker(Int32StringReceiver, protocol.ProcessProtocol):
    """One worker process. Jobs go to its stdin as bare pickles (a pickle marks its own
    end; the worker reads them with ``pickle.load``). Results come from its stdout, each a
    pickle behind a 4-byte big-endian length: ``multiprocessing.connection.Connection``
    frames it so on the worker's side, and this receiver (``!I``) reads the same bytes for
    anything under 2 GiB, from whatever pieces the pipe delivers."""

    # Any result, however big (the default, 99999, drops a worker over a big one). Past
    # 2 GiB Connection switches to an 8-byte length this receiver cannot read: the worker
    # is dropped and its jobs fail as worker-crashed.
    MAX_LENGTH = 2**31 - 1

    def __init__(self, pool: ProcessWorkers):
        self.pool = pool
        self.pending: deque[_Job] = deque()  # written to it, in order; the first is running
        self.ready = False
        self.ended: Deferred = Deferred()

    def send(self, job: _Job) -> None:
        self.pending.append(job)
        self.transport.write(pickle.dumps(job.call, protocol=pickle.HIGHEST_PROTOCOL))  # to its stdin

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.dataReceived(data)

    def stringReceived(self, data: bytes) -> None:
        message = pickle.loads(data)
        if message == READY:
            self.ready = True
        else:
            ok, value = message
            d = self.pending.popleft().d
            d.callback(value) if ok else d.errback(Failure(value))
        self.pool._dispatch()

    def processEnded(self, reason: Failure) -> None:
        pending, self.pending = self.pending, deque()
        self.pool._ended(self, f"image worker exited ({reason.value})", pending)
        self.ended.callback(None)


class ProcessWorkers:
    """``size`` worker processes (``IMGCRAWL_WORKER_POOL=process``, the default)."""

    def __init__(self, size: int):
        from twisted.internet import reactor

        self.reactor = reactor
        self.queue: deque[_Job] = deque()
        self.workers: list[_Worker] = []
        self.closing = False
        self.broken: str | None = None
        # Called once when the pool breaks (no worker can start): the crawl cannot store
        # anything, so the pipeline stops it rather than fail every image.
        self.on_broken: Callable[[str], None] | None = None
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        worker = _Worker(self)
        # The child finds imgcrawl where we did, also inside scrapyd's project egg.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        # numpy (the perceptual hash: 8x32 matrix products) would start a BLAS thread per
        # core in every worker, for work that one thread does in microseconds.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        # The child inherits this thread's signal mask (Twisted resets only ignored signals
        # to their default): with the stop signals blocked, one sent to the process group
        # while the worker is still starting waits until the worker ignores it.
        masked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.reactor.spawnProcess(
                worker, sys.executable, [sys.executable, "-m", "imgcrawl.worker"],
                env=env, childFDs={0: "w", 1: "r", 2: 2},
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, masked)
        self.workers.append(worker)

    def submit(self, name: str, *args) -> Deferred:
        d: Deferred = Deferred()
        if self.broken:
            d.errback(Failure(WorkerCrashed(self.broken)))
            return d
        self.queue.append(_Job((name, args), d))
        self._dispatch()
        return d

    def _dispatch(self) -> None:
        """Hand waiting jobs to the least busy workers, up to DEPTH each."""
        while self.queue and self.workers:
            worker = min(self.workers, key=lambda w: len(w.pending))
            if len(worker.pending) >= DEPTH:
                return
            worker.send(self.queue.popleft())

    def _ended(self, worker: _Worker, detail: str, pending: deque[_Job]) -> None:
        self.workers.remove(worker)
        if self.closing:
            # Closed with no job left to give (the crawl waits for its images first), or
            # killed after the close timeout: nothing takes its jobs over.
            self._fail(pending, detail)
            return
        if not worker.ready:
            # It died before it could start: a broken install, not a bad image. Say so
            # once (every worker fails alike), fail what waits, and do not respawn in a loop.
            if self.broken is None:
                self.broken = f"{detail} before it started (see its error above)"
                logger.error("imgcrawl: %s", self.broken)
                if self.on_broken is not None:
                    self.on_broken(self.broken)
            self._fail(pending, detail)
            self._fail(self.queue, self.broken)
            return
        if pending:
            # The first job is the one it was running, so perhaps the cause; the others
            # were only written ahead to it. All go back to the head of the queue, in order.
            pending[0].crashes += 1
            if pending[0].crashes >= MAX_CRASHES:
                pending.popleft().d.errback(Failure(WorkerCrashed(detail)))
            self.queue.extendleft(reversed(pending))
        logger.warning("imgcrawl: %s; starting another; the %d image(s) it held are tried again",
                       detail, len(pending))
        self._spawn()
        self._dispatch()

    @staticmethod
    def _fail(jobs: deque[_Job], detail: str) -> None:
        while jobs:
            jobs.popleft().d.errback(Failure(WorkerCrashed(detail)))

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


class Threads:
    """A Twisted thread pool of our own: the reactor's is sized by Scrapy's
    REACTOR_THREADPOOL_MAXSIZE and resolves DNS, which image work must not crowd out.

    Its threads are not daemons: left running, they would keep the process from exiting.
    So it is stopped by :meth:`stop` or, failing that, at reactor shutdown (as Twisted
    stops the reactor's own pool).
    """

    def __init__(self, size: int, name: str):
        self.pool = ThreadPool(0, size, name)  # threads start with the first calls
        self.shutdown_trigger = None
        self.running = 0
        self.idle: list[Deferred] = []

    def run(self, fn, *args) -> Deferred:
        """``fn(*args)`` on a pool thread; the Deferred fires on the reactor thread."""
        if self.pool.joined:
            # The pool would drop the call silently, leaving the Deferred unfired.
            return fail(RuntimeError(f"thread pool {self.pool.name} is closed"))
        if not self.pool.started:
            # Started on first use, as the reactor is only looked up then.
            from twisted.internet import reactor

            self.reactor = reactor
            self.pool.start()
            self.shutdown_trigger = reactor.addSystemEventTrigger("during", "shutdown", self._at_shutdown)
        self.running += 1
        return deferToThreadPool(self.reactor, self.pool, fn, *args).addErrback(forget_frames).addBoth(self._finished)

    def _finished(self, result):
        self.running -= 1
        if not self.running:
            idle, self.idle = self.idle, []
            for d in idle:
                # Next reactor turn: not from inside this call's own callbacks, which its
                # caller may still be waiting on when the pool is found idle.
                self.reactor.callLater(0, d.callback, None)
        return result

    def stop(self) -> Deferred:
        """Fires once the calls already made have returned and the threads have exited.

        The reactor thread joins the threads only when they are idle, so it never waits
        on a running call."""
        done: Deferred = Deferred()
        if self.running:
            self.idle.append(done)
        else:
            done.callback(None)

        def join(_) -> None:
            if self.shutdown_trigger is not None:
                self.reactor.removeSystemEventTrigger(self.shutdown_trigger)
                self.shutdown_trigger = None
            self._join()

        return done.addCallback(join)

    def _at_shutdown(self) -> None:
        self.shutdown_trigger = None  # fired and gone: not to be removed again
        self._join()

    def _join(self) -> None:
        if not self.pool.joined:
            self.pool.stop()  # waits for the calls still queued, then for the threads


class ThreadWorkers:
    """``size`` threads in this process (``IMGCRAWL_WORKER_POOL=thread``)."""

    def __init__(self, size: int):
        self.threads = Threads(size, "imgcrawl-image")

    def submit(self, name: str, *args) -> Deferred:
        return self.threads.run(JOBS[name], *args)

    def close(self) -> Deferred:
        """Fires once the jobs submitted have finished and the threads have exited."""
        return self.threads.stop()


class BatchingThread:
    """One thread whose calls are sent over in batches: the calls made within ``window``
    seconds (a page's "already stored?" lookups, the records of the images finished
    meanwhile) cross in one thread hop, instead of paying the reactor thread a hand-off
    (queue locks, a waker write, GIL switches) for each. All calls run on that one thread,
    in the order made: what they use (an SQLite connection) belongs to one thread."""

    def __init__(self, name: str, window: float = 0.02):
        self.thread = Threads(1, name)
        self.window = window
        self.calls: list[tuple] = []
        self.timer = None

    def call(self, fn, *args) -> Deferred:
        from twisted.internet import reactor

        d: Deferred = Deferred()
        if not self.calls:
            self.timer = reactor.callLater(self.window, self._flush)
        self.calls.append((fn, args, d))
        return d

    def _flush(self) -> None:
        if self.timer.active():
            self.timer.cancel()  # flushed early, by close()
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

        def fail_all(failure: Failure) -> None:  # the thread is gone (closed)
            for _, _, d in calls:
                d.errback(failure)

        self.thread.run(run_all).addCallbacks(deliver, fail_all)

    def close(self, fn=None) -> Deferred:
        """Run the calls still waiting, then ``fn`` (closing what the thread owns), then
        stop the thread. Fires with ``fn``'s result (or failure) once the thread is gone."""
        if self.calls:
            self._flush()
        ran = self.thread.run(fn) if fn is not None else succeed(None)
        # Stopped once fn has run; fn's failure is carried through, not left unhandled.
        return ran.addBoth(lambda result: self.thread.stop().addCallback(lambda _: result))
