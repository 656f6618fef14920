"""The worker pool on a real reactor: results and reasons come back from real worker
processes; a worker that dies is replaced and its jobs are tried again, once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r'''
import io, os, signal, sys
from PIL import Image
from twisted.internet import task, defer
from imgcrawl.workerpool import ProcessWorkers

def jpeg(size):
    buf = io.BytesIO(); Image.effect_noise(size, 40).convert("RGB").save(buf, "JPEG"); return buf.getvalue()

async def run(reactor, out):
    pool = ProcessWorkers(1)
    job = lambda data, name: pool.submit("process_image", data, f"{out}/{name}.jpg", {"t": ((64, 64), f"{out}/{name}-t.jpg")}, 10**8)
    facts = await job(jpeg((300, 200)), "good")
    print("good", facts["format"], facts["width"], facts["thumbs"]["t"])
    try:
        await job(jpeg((300, 200))[:2000], "bad")
    except Exception as exc:
        print("bad", type(exc).__name__, exc.reason)
    big = job(jpeg((3000, 2000)), "big")
    queued = job(jpeg((100, 100)), "after")
    worker = pool.workers[0]
    os.kill(worker.transport.pid, signal.SIGKILL)  # dies holding both jobs (the OOM killer)
    for d in (big, queued):
        try:
            print("kept", (await d)["width"])
        except Exception as exc:
            print("failed", exc.reason)
    facts = await job(jpeg((120, 80)), "replaced")
    print("replaced", facts["width"], pool.workers[0] is not worker)
    await pool.close()
    print("closed", pool.workers == [])

task.react(lambda reactor: defer.ensureDeferred(run(reactor, sys.argv[1])))
'''


def test_results_reasons_and_a_killed_worker(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "good JPEG 300 [64, 43]", out.stderr
    assert lines[1] == "bad ImageError undecodable"  # the reason survives the pipe
    # Killed from outside, the worker took no bad image down with it: both jobs it held
    # run again on its replacement, nothing lost.
    assert lines[2] == "kept 3000"  # the job the worker died on
    assert lines[3] == "kept 100"  # written ahead to the same worker
    assert lines[4] == "replaced 120 True"
    assert lines[5] == "closed True"
    assert out.stderr.count("image worker exited") == 1, out.stderr  # the one WARNING line
    assert (tmp_path / "big.jpg").exists() and (tmp_path / "after.jpg").exists()


def run_script(script: str, *args: str) -> tuple[dict, str]:
    """Run ``script`` (a real reactor, real threads or processes) in its own interpreter;
    it prints one JSON object last. Returns that object and the script's stderr."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1]), out.stderr


# The reactor must keep turning while threads work: a LoopingCall every TICK seconds counts
# how often it got the thread. A reactor blocked for the whole wait ticks once at most.
TICKS = r'''
import threading, time
from twisted.internet import task

TICK = 0.02

def start_ticks():
    ticks = []
    loop = task.LoopingCall(lambda: ticks.append(time.monotonic()))
    loop.start(TICK, now=False)
    return ticks, loop

def alive(ident):
    return any(t.ident == ident for t in threading.enumerate())
'''

BATCHING = TICKS + r'''
import json
from twisted.internet import defer
from imgcrawl.workerpool import BatchingThread

async def run(reactor):
    main = threading.get_ident()
    batching = BatchingThread("imgcrawl-probe", window=0.01)
    ran = []

    def work(i):
        ran.append((i, threading.get_ident()))
        if i % 3 == 0:
            raise ValueError(f"call {i}")
        return i * 10

    results = []
    for batch in range(3):  # three windows, three hops to the thread
        calls = [batching.call(work, batch * 5 + k) for k in range(5)]
        for d in calls:
            try:
                results.append(await d)
            except ValueError as exc:
                results.append(str(exc))
    waiting = [batching.call(work, 100), batching.call(work, 101)]  # their window not yet over

    def last():
        time.sleep(0.5)
        ran.append(("last", threading.get_ident()))
        return "closed"

    ticks, loop = start_ticks()
    began = time.monotonic()
    closing = batching.close(last)
    returned_after = time.monotonic() - began
    fired_at_once = closing.called
    closed = await closing
    loop.stop()
    thread = ran[0][1]
    print(json.dumps({
        "results": results, "waiting": [await d for d in waiting], "closed": closed,
        "order": [i for i, _ in ran], "threads": sorted({t for _, t in ran}), "main": main,
        "returned_after": returned_after, "fired_at_once": fired_at_once,
        "ticks_while_closing": len([t for t in ticks if t < began + 0.5]),
        "thread_alive_after_close": alive(thread),
    }))

task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
'''


def test_batching_thread_runs_every_call_on_one_thread_in_order():
    r, _ = run_script(BATCHING)
    # One thread, the same for every batch and for close's last call, never the reactor's:
    # an SQLite connection is used from one thread only.
    assert len(r["threads"]) == 1 and r["threads"][0] != r["main"], r
    assert r["order"] == [*range(15), 100, 101, "last"]  # as made; close runs the waiting ones first
    # Each caller gets its own result or its own failure, not a neighbour's.
    assert r["results"] == [f"call {i}" if i % 3 == 0 else i * 10 for i in range(15)]
    assert r["waiting"] == [1000, 1010] and r["closed"] == "closed"
    # close() hands back a Deferred at once; the reactor turns while the last call runs.
    assert not r["fired_at_once"] and r["returned_after"] < 0.2, r
    assert r["ticks_while_closing"] >= 5, r
    assert not r["thread_alive_after_close"]


THREADS = TICKS + r'''
import json
from twisted.internet import defer
from imgcrawl import worker
from imgcrawl.workerpool import ThreadWorkers

def probe(i, delay):
    time.sleep(delay)
    if i == 2:
        raise ValueError("job 2")
    return threading.get_ident()

async def run(reactor):
    worker.JOBS["probe"] = probe  # a thread pool looks jobs up in this very process
    main = threading.get_ident()
    pool = ThreadWorkers(2)
    ticks, loop = start_ticks()
    began = time.monotonic()
    jobs = [pool.submit("probe", i, 0.3) for i in range(4)]  # two rounds on two threads
    closing = pool.close()
    returned_after = time.monotonic() - began
    fired_at_once = closing.called
    closing.addCallback(lambda _: [d.called for d in jobs])
    jobs_done_at_close = await closing
    loop.stop()
    threads, failures = [], []
    for d in jobs:
        try:
            threads.append(await d)
        except ValueError as exc:
            failures.append(str(exc))
    print(json.dumps({
        "threads": sorted(set(threads)), "failures": failures, "main": main,
        "returned_after": returned_after, "fired_at_once": fired_at_once,
        "jobs_done_at_close": jobs_done_at_close,
        "ticks_while_working": len([t for t in ticks if t < began + 0.6]),
        "threads_alive_after_close": [alive(t) for t in set(threads)],
    }))

task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
'''


def test_thread_workers_run_jobs_off_the_reactor_and_close_without_blocking_it():
    r, _ = run_script(THREADS)
    assert r["main"] not in r["threads"] and 1 <= len(r["threads"]) <= 2, r
    assert r["failures"] == ["job 2"]
    # close() returns at once and fires only after every submitted job has finished.
    assert not r["fired_at_once"] and r["returned_after"] < 0.2, r
    assert r["jobs_done_at_close"] == [True] * 4
    assert r["ticks_while_working"] >= 8, r  # ~30 if never blocked; a blocked reactor: 1
    assert r["threads_alive_after_close"] == [False] * len(r["threads"])


BIG = r'''
import io, json, os, sys
from PIL import Image
from twisted.internet import task, defer
from imgcrawl.workerpool import ProcessWorkers

async def run(reactor, out):
    buf = io.BytesIO(); Image.effect_noise((64, 48), 40).convert("RGB").save(buf, "JPEG")
    pool = ProcessWorkers(1)
    pid = pool.workers[0].transport.pid
    report = {}
    # The facts echo each thumbnail's name: a long random name makes a big job and a
    # result just as big, in which any lost, doubled or reordered byte shows.
    for size in (150_000, 2 * 1024 * 1024):
        name = os.urandom(size // 2).hex()
        facts = await pool.submit("process_image", buf.getvalue(), None, {name: ((16, 16), f"{out}/{size}.jpg")}, 10**8)
        report[size] = list(facts["thumbs"]) == [name] and len(facts["thumbs"][name]) == 2
    facts = await pool.submit("process_image", buf.getvalue(), None, {}, 10**8)  # the stream still in step
    report["after"] = facts["width"]
    report["same_worker"] = [w.transport.pid for w in pool.workers] == [pid]
    await pool.close()
    print(json.dumps(report))

task.react(lambda reactor: defer.ensureDeferred(run(reactor, sys.argv[1])))
'''


def test_results_over_99999_bytes_and_1_mib_cross_the_worker_pipe_intact(tmp_path):
    r, _ = run_script(BIG, str(tmp_path))
    assert r == {"150000": True, "2097152": True, "after": 64, "same_worker": True}


BROKEN = r'''
import json, sys
from twisted.internet import task, defer
from imgcrawl.workerpool import ProcessWorkers

sys.executable = "/bin/false"  # workers that exit before they can say READY: a broken install

async def run(reactor):
    pool = ProcessWorkers(2)
    details = []
    for _ in range(2):
        try:
            await pool.submit("process_image", b"GIF89a", None, {}, 10)
        except Exception as exc:
            details.append([exc.reason, exc.detail])
    await task.deferLater(reactor, 0.5, lambda: None)
    workers_later = len(pool.workers)  # none respawned
    await pool.close()
    print(json.dumps({"details": details, "workers_later": workers_later}))

task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
'''


def test_workers_that_die_before_ready_mark_the_pool_broken_without_respawning():
    r, stderr = run_script(BROKEN)
    assert [reason for reason, _ in r["details"]] == ["worker-crashed", "worker-crashed"], r
    assert r["details"][1][1].endswith("before it started (see its error above)")  # failed at once
    assert r["workers_later"] == 0
    assert stderr.count("before it started") == 1  # said once, at ERROR


SIGNALS = r'''
import io, json, os, signal, sys, time
from PIL import Image
from twisted.internet import task, defer
from imgcrawl.workerpool import ProcessWorkers

async def run(reactor, out):
    buf = io.BytesIO(); Image.new("RGB", (100, 80)).save(buf, "JPEG")
    pool = ProcessWorkers(1)
    worker = pool.workers[0]
    pid = worker.transport.pid
    # At once, while the worker is still starting Python: the stop signals Ctrl-C, systemd
    # and kill -- -PGID send to the whole process group.
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    first = await pool.submit("process_image", buf.getvalue(), f"{out}/a.jpg", {}, 10**8)
    os.kill(pid, signal.SIGTERM)  # and once it runs
    os.kill(pid, signal.SIGINT)
    second = await pool.submit("process_image", buf.getvalue(), f"{out}/b.jpg", {}, 10**8)
    same = [w.transport.pid for w in pool.workers] == [pid]
    await pool.close()  # stdin closed: the worker exits by itself, well before the kill timeout
    print(json.dumps({"widths": [first["width"], second["width"]], "same_worker": same,
                      "exit": worker.transport.status}))

task.react(lambda reactor: defer.ensureDeferred(run(reactor, sys.argv[1])))
'''


def test_workers_outlive_sigterm_and_sigint_even_while_starting(tmp_path):
    r, stderr = run_script(SIGNALS, str(tmp_path))
    assert r == {"widths": [100, 100], "same_worker": True, "exit": 0}, (r, stderr)
    assert "exited" not in stderr and "before it started" not in stderr, stderr


POISON = r'''
import io, json, os, signal, sys
from PIL import Image
from twisted.internet import task, defer
from imgcrawl.workerpool import ProcessWorkers

async def until(reactor, check, what):  # bounded: 60 s
    for _ in range(600):
        if check():
            return
        await task.deferLater(reactor, 0.1, lambda: None)
    raise SystemExit(f"timed out waiting for {what}")

async def run(reactor, out):
    buf = io.BytesIO(); Image.new("RGB", (100, 80)).save(buf, "JPEG")
    pool = ProcessWorkers(1)
    # A job that never ends (it reads a FIFO no one writes), as a decoder stuck or crashing
    # on one input: killing each worker that runs it stands for the crash it causes.
    fifo = f"{out}/fifo"; os.mkfifo(fifo)
    stuck = pool.submit("rethumb", fifo, {}, 10**8)
    after = pool.submit("process_image", buf.getvalue(), f"{out}/after.jpg", {}, 10**8)
    pids = []
    for n in range(2):
        worker = pool.workers[0]
        await until(reactor, lambda: worker.ready and len(worker.pending) == 2, f"worker {n} to hold both jobs")
        pids.append(worker.transport.pid)
        os.kill(worker.transport.pid, signal.SIGKILL)
        await until(reactor, lambda: pool.workers and pool.workers[0] is not worker, "a new worker")
    report = {"distinct_workers": len(set(pids))}
    try:
        await stuck
    except Exception as exc:
        report["stuck"] = exc.reason
    report["after"] = (await after)["width"]
    await pool.close()
    print(json.dumps(report))

task.react(lambda reactor: defer.ensureDeferred(run(reactor, sys.argv[1])))
'''


def test_a_job_that_takes_down_two_workers_fails_and_the_jobs_behind_it_do_not(tmp_path):
    r, stderr = run_script(POISON, str(tmp_path))
    assert r == {"distinct_workers": 2, "stuck": "worker-crashed", "after": 100}, (r, stderr)
    assert stderr.count("image worker exited") == 2, stderr  # one WARNING per death
    assert (tmp_path / "after.jpg").exists()
