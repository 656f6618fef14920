"""Local servers shared by the tests and the benchmarks: a free port on 127.0.0.1, and a
private redis-server (the distributed tests, ``benchmarks/multicore.py``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(data: Path) -> tuple[subprocess.Popen, str]:
    """A redis-server on 127.0.0.1 keeping nothing on disk (in ``data``), once it answers:
    the process and its URL. Raises RuntimeError when it is not installed or does not answer."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (.ci/run installs the Debian package)")
    import redis  # the `distributed` extra

    port = free_port()
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(100):  # up to ~10 s
            try:
                client.ping()
                return proc, url
            except redis.ConnectionError:
                time.sleep(0.1)
    finally:
        client.close()
    proc.kill()
    proc.wait(timeout=10)
    raise RuntimeError("redis-server did not answer within 10 s")
