"""The worker pool on a real reactor: results and reasons come back from real worker
processes, and a worker that dies fails only its own jobs and is replaced."""

from __future__ import annotations

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
    os.kill(worker.transport.pid, signal.SIGKILL)  # dies holding both jobs
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
    assert lines[2] == "failed worker-crashed"  # the job the worker died on
    assert lines[3] == "failed worker-crashed"  # written ahead to the same worker
    assert lines[4] == "replaced 120 True"
    assert lines[5] == "closed True"
    assert "worker-crashed" in out.stderr or "exited" in out.stderr  # the one WARNING line
    assert (tmp_path / "good.jpg").exists() and not (tmp_path / "big.jpg").exists()
