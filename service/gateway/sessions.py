"""Every open client connection of this process, so shutdown can close them all (1001)."""

from __future__ import annotations

import asyncio
import logging
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

    def add(self, session: Closable) -> None:
        self.open.add(session)

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
