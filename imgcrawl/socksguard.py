"""The rendering browser's only way out: a SOCKS5 proxy on 127.0.0.1 that checks each
connection with the SSRF guard and connects only to the addresses it allowed.

Chromium is started with this proxy for everything, loopback included, and sends it the
host name of each connection (SOCKS5 resolves names at the proxy). The proxy asks ``check``
(the crawl's :class:`~imgcrawl.guard.PrivateAddressGuard`) for the addresses it allows and
connects to one of those, so pages, scripts, data requests, every redirect hop and
WebSockets are all checked, against the address actually connected to: a name that
rebinds between the check and the connection reaches nothing else. Anything but a CONNECT
(UDP, BIND) and anything malformed is refused. Pure asyncio (the reactor rendering runs on).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

# check(host) -> the addresses to connect to; raising refuses the connection.
Check = Callable[[str], Awaitable[list[str]]]
Refused = Callable[[str, BaseException], None]

# A client that has not said where to within this long is dropped; so is a connection
# attempt to an allowed address that has not succeeded.
HANDSHAKE_SECONDS = 10
CONNECT_SECONDS = 15
CHUNK = 64 * 1024

# RFC 1928 reply codes.
SUCCEEDED, NOT_ALLOWED, HOST_UNREACHABLE, NOT_SUPPORTED, ADDRESS_NOT_SUPPORTED = 0, 2, 4, 7, 8


def reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


async def read_target(reader, writer) -> tuple[str, int] | None:
    """The greeting and the CONNECT request: ``(host, port)``, or None once refused."""
    version, count = await reader.readexactly(2)
    methods = await reader.readexactly(count)
    if version != 5 or 0 not in methods:
        writer.write(b"\x05\xff")  # no acceptable method: only "no authentication" is offered
        return None
    writer.write(b"\x05\x00")
    version, command, _, kind = await reader.readexactly(4)
    if kind == 1:
        host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
    elif kind == 4:
        host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
    elif kind == 3:
        host = (await reader.readexactly((await reader.readexactly(1))[0])).decode("ascii", "replace")
    else:
        writer.write(reply(ADDRESS_NOT_SUPPORTED))
        return None
    port = int.from_bytes(await reader.readexactly(2), "big")
    if version != 5 or command != 1:
        writer.write(reply(NOT_SUPPORTED))
        return None
    return host, port


async def pipe(reader, writer) -> None:
    """Copy until end of stream, then pass the end on (half-close)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class GuardedSocksProxy:
    """``await start()`` gives the port; ``await close()`` ends every connection."""

    def __init__(self, check: Check, refused: Refused):
        self.check, self.refused = check, refused
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    async def serve(self, reader, writer) -> None:
        task = asyncio.current_task()
        self.connections.add(task)
        upstream = None
        try:
            target = await asyncio.wait_for(read_target(reader, writer), HANDSHAKE_SECONDS)
            if target is None:
                return
            host, port = target
            try:
                addresses = await self.check(host)
            except Exception as exc:  # noqa: BLE001 - refused, or not checkable: fail closed
                self.refused(f"{host}:{port}", exc)
                writer.write(reply(NOT_ALLOWED))
                return
            upstream = await self.connect(addresses, port)
            if upstream is None:
                writer.write(reply(HOST_UNREACHABLE))
                return
            writer.write(reply(SUCCEEDED))
            await asyncio.gather(pipe(reader, upstream[1]), pipe(upstream[0], writer))
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the browser gave up or the peer went away: nothing to report
        except asyncio.CancelledError:
            pass  # closed with the browser: asyncio would log a cancelled handler as an error
        finally:
            for stream in (writer, upstream[1] if upstream else None):
                if stream is not None:
                    stream.close()
            self.connections.discard(task)

    async def connect(self, addresses: list[str], port: int):
        for address in addresses:
            try:
                return await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_SECONDS)
            except (OSError, asyncio.TimeoutError) as exc:
                logger.debug("Browser connection to %s:%s failed: %s", address, port, exc)
        return None
