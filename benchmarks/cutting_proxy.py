"""A TCP proxy that cuts every connection through it after a random lifetime.

For the network-drop benchmark: each accepted connection is piped to the upstream (a
gateway) and aborted on both sides (a reset, as a dropped NAT entry or a flaky link gives)
after a lifetime drawn uniformly from [period/2, 3*period/2], so a client is cut about every
`period` seconds and the cuts are spread, not in step.
"""

from __future__ import annotations

import asyncio
import random


class _Side(asyncio.Protocol):
    """One side of a proxied connection: what it reads goes to its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending = bytearray()  # read before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending += data

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class CuttingProxy:
    def __init__(self, upstream_port: int, period_s: float) -> None:
        self.upstream_port = upstream_port
        self.period_s = period_s
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accepted, "127.0.0.1", 0, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    def _accepted(self) -> _Side:
        client = _Side()
        asyncio.get_running_loop().create_task(self._connect(client))
        return client

    async def _connect(self, client: _Side) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Side, "127.0.0.1", self.upstream_port)
        except OSError:
            client.abort()
            return
        client.peer, upstream.peer = upstream, client
        if client.pending and upstream.transport is not None:
            upstream.transport.write(bytes(client.pending))
            client.pending.clear()
        lifetime = random.uniform(0.5, 1.5) * self.period_s
        loop.call_later(lifetime, self._cut, client, upstream)

    def _cut(self, client: _Side, upstream: _Side) -> None:
        if client.transport is None or client.transport.is_closing():
            return  # already closed by either end
        self.cuts += 1
        client.abort()
        upstream.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
