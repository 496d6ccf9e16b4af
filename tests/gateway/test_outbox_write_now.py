"""The outbox's synchronous send path (`write_now`, the server's fast path): frames go out in
the step that offers them while the connection takes them, and in order when it does not."""

from __future__ import annotations

import asyncio

from service.gateway.outbox import Outbox
from service.stats import GatewayStats
from tests.conftest import wait_for


class Wire:
    """A connection that takes frames at once while `open`, else only through a send that
    waits until it opens again."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.open = True
        self._opened = asyncio.Event()
        self.waiting_sends = 0

    def write_now(self, frame: bytes) -> bool:
        if not self.open:
            return False
        self.frames.append(frame)
        return True

    async def send(self, frame: bytes) -> None:
        if not self.open:
            self.waiting_sends += 1
            self._opened.clear()
            await self._opened.wait()
        self.frames.append(frame)

    async def send_close(self, code: int, _reason: str) -> None:
        self.frames.append(b"close %d" % code)

    def reopen(self) -> None:
        self.open = True
        self._opened.set()


def outbox_on(wire: Wire, stats: GatewayStats) -> Outbox:
    return Outbox(
        wire.send,
        wire.send_close,
        limit_bytes=1 << 20,
        stall_timeout_s=60,
        stats=stats,
        on_drained=lambda: None,
        on_stalled=lambda: None,
        write_now=wire.write_now,
    )


async def test_frames_go_out_in_the_step_that_offers_them() -> None:
    wire, stats = Wire(), GatewayStats()
    outbox = outbox_on(wire, stats)
    for i in range(5):
        assert outbox.offer(b"event %d" % i)
    outbox.put(b"reply")
    # Nothing awaited: written synchronously, nothing left waiting.
    assert wire.frames == [b"event 0", b"event 1", b"event 2", b"event 3", b"event 4", b"reply"]
    assert outbox.backlog_bytes == 0 and stats.frames_sent == 6
    assert stats.events_delivered == 5


async def test_frames_wait_behind_a_send_that_waits_and_keep_their_order() -> None:
    wire, stats = Wire(), GatewayStats()
    outbox = outbox_on(wire, stats)
    outbox.offer(b"1")
    wire.open = False  # the client stops reading: the next frame's send must wait
    outbox.offer(b"2")
    assert wire.waiting_sends == 1
    wire.open = True  # the connection would take a frame now, but "2" is still on its way
    outbox.offer(b"3")
    outbox.close(1000, "")
    assert wire.frames == [b"1"]  # "3" did not overtake "2"
    assert outbox.backlog_bytes == 1
    wire.reopen()
    await wait_for(lambda: len(wire.frames) == 4, what="the rest, in order")
    assert wire.frames == [b"1", b"2", b"3", b"close 1000"]
    await outbox.finish(asyncio.get_running_loop().time() + 1)
