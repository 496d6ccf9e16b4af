"""The registry shutdown closes connections through (`gateway/sessions.py`)."""

from __future__ import annotations

import asyncio

from service.gateway.protocol import CloseCode
from service.gateway.sessions import Sessions
from tests.conftest import wait_for


class Recorded:
    """A connection that records how it was told to close."""

    def __init__(self) -> None:
        self.codes: list[CloseCode] = []

    def close(self, code: CloseCode, reason: str = "") -> None:
        self.codes.append(code)


async def test_a_session_added_once_shutdown_began_is_closed_at_once() -> None:
    """An event stream's checks await Redis before it registers: if shutdown began
    meanwhile, `close_all` has already passed it, and only `add` can tell it (it used to
    stream on until uvicorn cancelled it, logging a traceback)."""
    sessions = Sessions()
    early = Recorded()
    sessions.add(early)
    waiting = asyncio.create_task(sessions.close_all(timeout_s=5))
    await wait_for(lambda: early.codes, what="close_all to tell the open session")
    late = Recorded()
    sessions.add(late)
    assert early.codes == [CloseCode.GOING_AWAY]
    assert late.codes == [CloseCode.GOING_AWAY]
    sessions.remove(early)
    sessions.remove(late)
    await waiting  # returns once both are gone
