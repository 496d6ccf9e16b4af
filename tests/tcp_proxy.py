"""A loopback TCP proxy that can freeze its connections: a fault injector for tests.

`freeze()` stops forwarding on every connection open at that moment without closing them, so
both ends see a connection that looks alive and carries nothing (a half-open connection, a NAT
that forgot its mapping). Connections made afterwards work normally, unless the freeze covers
new connections too (Redis unreachable while its TCP port still accepts). `switch()` cuts
every open connection and sends later ones to another server: a failover behind one address.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.redis_servers import free_port


@dataclass
class _Link:
    frozen: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._links: list[_Link] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._freeze_new = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def freeze(self, *, new_ones_too: bool = False) -> int:
        """Freeze every open connection (and, if asked, every later one); returns how many."""
        self._freeze_new = new_ones_too
        for link in self._links:
            link.frozen = True
        return len(self._links)

    def thaw(self) -> None:
        """New connections work again (frozen ones stay frozen, as a dead link would)."""
        self._freeze_new = False

    def switch(self, target_port: int) -> int:
        """Point new connections at `target_port` and cut the open ones; returns how many."""
        self.target_port = target_port
        links, self._links = self._links, []
        for link in links:
            link.frozen = True
            for writer in link.writers:
                writer.close()
        return len(links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        link = _Link(frozen=self._freeze_new, writers=[writer, up_writer])
        self._links.append(link)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(link, source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, link: _Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if link.frozen:
                    continue  # swallowed: the peer never hears of it
                sink.write(data)
                await sink.drain()
        if not link.frozen:
            with contextlib.suppress(Exception):
                sink.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self._links:
            for writer in link.writers:
                writer.close()
        if self._server is not None:
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def tcp_proxy(target_port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
