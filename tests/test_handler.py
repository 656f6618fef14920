"""imgcrawl's download handler writes a request to the socket when it is made, not at the
reactor's next poll, and still reads the response like Scrapy's own handler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r'''
import socket
from twisted.internet import defer, endpoints, task
from twisted.web.client import Headers, readBody
from twisted.web._newclient import Request
from scrapy.core.downloader.handlers.http11 import _LenientHTTP11ClientProtocol
from imgcrawl.compat import SendNowProtocol

async def run(reactor):
    server = socket.create_server(("127.0.0.1", 0))
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.getsockname()[1])
    for protocol_class in (_LenientHTTP11ClientProtocol, SendNowProtocol):
        protocol = await endpoints.connectProtocol(endpoint, protocol_class(lambda p: None))
        peer, _ = server.accept()
        peer.setblocking(False)
        response = protocol.request(Request(b"GET", b"/a.jpg", Headers({b"host": [b"127.0.0.1"]}), None))
        try:  # no reactor turn since request(): only what was written at once is there
            first = peer.recv(4096)
        except BlockingIOError:
            first = b""
        print(protocol_class.__name__, "sent at once:", first.split(b"\r\n")[0].decode() or "nothing")
        if not first:  # the next reactor turn sends it
            await task.deferLater(reactor, 0.05, lambda: None)
            peer.settimeout(5)
            assert peer.recv(4096).startswith(b"GET /a.jpg ")
        peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nimage")
        response = await response
        print(protocol_class.__name__, "response:", response.code, (await readBody(response)).decode())
        protocol.transport.loseConnection()
        peer.close()

task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
'''


def test_request_is_on_the_socket_before_the_reactor_turns():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == [
        # Twisted's own behaviour, the reason for the handler: the request waits in a buffer.
        "_LenientHTTP11ClientProtocol sent at once: nothing",
        "_LenientHTTP11ClientProtocol response: 200 image",
        "SendNowProtocol sent at once: GET /a.jpg HTTP/1.1",
        "SendNowProtocol response: 200 image",
    ], out.stderr
