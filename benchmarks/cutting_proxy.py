"""A TCP proxy that cuts connections through it: each after a random lifetime, or all at once.

For the network-drop benchmark: each accepted connection is piped to the upstream (a
gateway) and aborted on both sides (a reset, as a dropped NAT entry or a flaky link gives)
after a lifetime drawn uniformly from [period/2, 3*period/2], so a client is cut about every
`period` seconds and the cuts are spread, not in step. For the chaos benchmark: a load
balancer over several gateways (round robin, passing over one that refuses), without random
cuts, whose `cut_all` resets every connection through it at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable


class _Side(asyncio.Protocol):
    """One side of a proxied connection: what it reads goes to its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending = bytearray()  # read before the peer was connected
        self.closed_callback: Callable[[], None] | None = None

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
        if self.closed_callback is not None:
            self.closed_callback()
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class CuttingProxy:
    def __init__(self, upstream_ports: list[int], period_s: float | None) -> None:
        self.upstream_ports = upstream_ports
        self.period_s = period_s
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._next = 0
        self._open: set[tuple[_Side, _Side]] = set()

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
        upstream: _Side | None = None
        for _ in self.upstream_ports:  # round robin; an upstream that refuses is passed over
            port = self.upstream_ports[self._next % len(self.upstream_ports)]
            self._next += 1
            try:
                _, upstream = await loop.create_connection(_Side, "127.0.0.1", port)
                break
            except OSError:
                continue
        if upstream is None:
            client.abort()
            return
        client.peer, upstream.peer = upstream, client
        if client.pending and upstream.transport is not None:
            upstream.transport.write(bytes(client.pending))
            client.pending.clear()
        pair = (client, upstream)
        self._open.add(pair)
        if client.transport is not None:
            # Forgotten once closed; a connection that closed before this is not kept.
            if client.transport.is_closing():
                self._open.discard(pair)
            client.closed_callback = lambda: self._open.discard(pair)
        if self.period_s is not None:
            lifetime = random.uniform(0.5, 1.5) * self.period_s
            loop.call_later(lifetime, self._cut, client, upstream)

    def _cut(self, client: _Side, upstream: _Side) -> None:
        if client.transport is None or client.transport.is_closing():
            return  # already closed by either end
        self.cuts += 1
        client.abort()
        upstream.abort()

    def cut_all(self) -> int:
        """Reset every connection through the proxy now; returns how many."""
        before = self.cuts
        for client, upstream in list(self._open):
            self._cut(client, upstream)
        self._open.clear()
        return self.cuts - before

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
