"""Shared fixtures: a real HTTP site on 127.0.0.1 and a real ``scrapy crawl`` subprocess."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imgcrawl.demo import build_gallery
from servers import start_redis

REPO = Path(__file__).resolve().parent.parent
CRAWL_TIMEOUT = 180  # seconds; every crawl subprocess is killed after this

# A handler gets the request handler and may write any response itself (hostile cases).
Handler = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class LocalSite:
    """Files served over HTTP/1.1 keep-alive on 127.0.0.1 at a free port.

    ``files`` maps a path (with query) to ``(content_type, body)``; ``handlers`` maps a
    path to a callable that writes its own response; ``delays`` maps a path to seconds to
    wait before answering. ``hits`` counts requests per path and ``connections`` counts
    TCP connections, so tests can assert what was fetched.
    """

    files: dict[str, tuple[str, bytes]]
    handlers: dict[str, Handler] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    hits: Counter = field(default_factory=Counter)
    connections: int = 0
    port: int = 0
    tls: ssl.SSLContext | None = None  # serve HTTPS with this context
    host: str = "127.0.0.1"  # another loopback address (127.0.0.2) stands in for a LAN host

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}{path}"

    def start(self) -> "LocalSite":
        site = self
        lock = threading.Lock()

        class Request(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with lock:
                    site.connections += 1

            def do_GET(self):  # noqa: N802 - http.server's name
                with lock:
                    site.hits[self.path] += 1
                time.sleep(site.delays.get(self.path, 0))
                if self.path in site.handlers:
                    site.handlers[self.path](self)
                    return
                content_type, body = site.files.get(self.path, ("text/plain", None))
                self.send_response(404 if body is None else 200)
                body = b"not found" if body is None else body
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Request)
        self._server.daemon_threads = True
        if self.tls:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def answer(h: BaseHTTPRequestHandler, content_type: str, body: bytes, status: int = 200) -> None:
    """Write a whole response from a :class:`LocalSite` handler."""
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


@pytest.fixture
def demo_site():
    site = LocalSite(build_gallery()).start()
    yield site
    site.stop()


def self_signed_tls(directory: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    pem = directory / "site.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


@dataclass
class CrawlResult:
    returncode: int
    log: str
    store: Path

    def manifest(self) -> list[dict]:
        """The merged manifest: one line per image URL, its latest state."""
        path = self.store / "manifest.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def crawl_lines(self, index: int = -1) -> list[dict]:
        """The lines one crawl wrote, in the order written: its journal in the manifest's
        history (``crawls/``, oldest first; -1 is the latest crawl into this store)."""
        journals = sorted((self.store / "crawls").glob("manifest-*.jsonl"))
        return [json.loads(line) for line in journals[index].read_text().splitlines() if line.strip()]


def crawl_command(store: Path | str, *args: str, spider: str = "gallery",
                  settings: dict | None = None, env: dict | None = None) -> tuple[list[str], dict]:
    """The ``scrapy crawl`` command line and environment (``env`` added) that :func:`run_crawl` runs."""
    cmd = [sys.executable, "-m", "scrapy", "crawl", spider, "-s", f"IMAGES_STORE={store}"]
    # The local test sites are on 127.0.0.1: lift the SSRF guard unless a test sets it. Tests
    # read the crawl's stats from Scrapy's stats dump: keep it at INFO (IMGCRAWL_BRIEF_LOG).
    for name, value in {"IMGCRAWL_ALLOW_PRIVATE": True, "IMGCRAWL_BRIEF_LOG": False, **(settings or {})}.items():
        cmd += ["-s", f"{name}={value}"]
    cmd += list(args)
    env = {**os.environ, "SCRAPY_SETTINGS_MODULE": "imgcrawl.settings", "PYTHONPATH": str(REPO), **(env or {})}
    return cmd, env


def run_crawl(tmp_path: Path, *args: str, spider: str = "gallery", store: Path | str | None = None,
              settings: dict | None = None, timeout: float = CRAWL_TIMEOUT,
              wrapper: tuple[str, ...] = (), env: dict | None = None) -> CrawlResult:
    """``scrapy crawl <spider> <args>`` in a subprocess, with the project's settings;
    ``wrapper`` is a command prefix (e.g. ``unshare ...``) to run it under."""
    store = store or tmp_path / "store"
    cmd, env = crawl_command(store, *args, spider=spider, settings=settings, env=env)
    cmd = [*wrapper, *cmd]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    return CrawlResult(proc.returncode, proc.stdout + proc.stderr, store)


@pytest.fixture
def redis_url(tmp_path):
    data = tmp_path / "redis"
    data.mkdir()
    try:
        proc, url = start_redis(data)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
