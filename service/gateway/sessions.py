"""Every open client connection of this process, so shutdown can close them all (1001)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from service.gateway.protocol import CloseCode

log = logging.getLogger(__name__)


class Closable(Protocol):
    def close(self, code: CloseCode, reason: str = "") -> None: ...


class Sessions:
    def __init__(self) -> None:
        self.open: set[Closable] = set()
        self.shutting_down = False
        self._done = asyncio.Event()
        # Every TCP connection of the server (set by the server that runs this app): a socket
        # being closed, a response nobody reads and an idle keep-alive connection hold a file
        # descriptor and buffers as much as a live socket, so all of them count.
        self.count_connections: Callable[[], int] | None = None

    def at_capacity(self, limit: int) -> bool:
        """True when one more socket or stream would exceed `limit` (MAX_SOCKETS).

        The connection asking is one of the server's connections already (as is every open
        session's), so it is allowed while there are at most `limit` of them, itself included.
        Mounted in an app whose server does not say, the open sessions are what is counted."""
        if self.count_connections is not None:
            return self.count_connections() > limit
        return len(self.open) >= limit

    def add(self, session: Closable) -> None:
        """Register a session; one that arrives once shutdown began (its checks awaited Redis
        while `close_all` ran) is told at once, or it would outlive the grace period."""
        self.open.add(session)
        if self.shutting_down:
            session.close(CloseCode.GOING_AWAY, "server shutting down")

    def remove(self, session: Closable) -> None:
        self.open.discard(session)
        if not self.open:
            self._done.set()

    async def close_all(self, timeout_s: float) -> None:
        """Tell every client the gateway is going away, and wait (bounded) until they are gone."""
        self.shutting_down = True
        if not self.open:
            return
        log.info("closing %d client connection(s) with %d", len(self.open), CloseCode.GOING_AWAY)
        self._done.clear()
        for session in list(self.open):
            session.close(CloseCode.GOING_AWAY, "server shutting down")
        try:
            await asyncio.wait_for(self._done.wait(), timeout_s)
        except TimeoutError:
            log.warning("%d connection(s) did not close in %.1fs", len(self.open), timeout_s)
