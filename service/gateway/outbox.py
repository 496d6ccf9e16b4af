"""What waits to be sent to one client, and the flow control that keeps it bounded.

Everything for the client (event frames, replies, errors, finally the close frame) goes
through one queue that one writer task drains; nothing else sends on the connection. The
writer exists only while there is something to send, so an idle client costs no task.

Flow control lives here and nowhere else. Event frames are *offered*: past `limit_bytes`
waiting, an offer is refused, and the hub then serves that watch from the job's stream
later, at the client's pace. Once a refusal (or a "no room" answer) was given, the outbox owes
its owner a `drained` call, made when the queue falls to half the limit; the hub resumes
every watch it paused for this client then. Because the debt is recorded in the same step
that refuses, and paid by the only task that shrinks the queue, no wake-up can be lost.

A client that accepts nothing for `stall_timeout_s` while frames wait is `stalled`: its owner
closes it (1013). A client that reads slowly but steadily is never closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.codec import EVENT_PREFIX, FrameError, frame_ts
from service.stats import GatewayStats

log = logging.getLogger(__name__)

# Timing every send costs a fifth of the gateway's throughput; one in eight shows the same
# distribution at a fraction of the cost.
LATENCY_SAMPLE_EVERY = 8


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


SendFrame = Callable[[bytes], Awaitable[None]]
SendClose = Callable[[int, str], Awaitable[None]]


class Outbox:
    """One client's send queue and its writer; flow control in bytes."""

    # Thousands of these live at once, mostly idle: slots keep each one small.
    __slots__ = (
        "_backlog",
        "_closing",
        "_idle",
        "_limit",
        "_loop",
        "_on_drained",
        "_on_stalled",
        "_owed",
        "_progress_at",
        "_queue",
        "_resume_at",
        "_send_close",
        "_send_frame",
        "_stall_s",
        "_stall_timer",
        "_stats",
        "_writer",
        "close_code",
        "last_sent_at",
    )

    def __init__(
        self,
        send_frame: SendFrame,
        send_close: SendClose,
        *,
        limit_bytes: int,
        stall_timeout_s: float,
        stats: GatewayStats,
        on_drained: Callable[[], None],
        on_stalled: Callable[[], None],
    ) -> None:
        self._send_frame = send_frame
        self._send_close = send_close
        self._limit = limit_bytes
        self._resume_at = limit_bytes // 2
        self._stall_s = stall_timeout_s
        self._stats = stats
        self._on_drained = on_drained
        self._on_stalled = on_stalled
        self._queue: deque[bytes | Close] = deque()
        self._backlog = 0
        self._owed = False  # a refusal was given: call `on_drained` once the queue is low
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[bool] | None = None  # the writer waits here for more
        self._stall_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._progress_at = self.last_sent_at = self._loop.time()
        self.close_code: int | None = None

    # -- what the hub and the protocol queue ---------------------------------------------------

    def offer(self, frame: bytes) -> bool:
        """Queue an event frame if the client has room; False: not queued, `drained` will come."""
        if self._backlog >= self._limit or self._closing:
            self._owed = not self._closing
            return False
        self._stats.events_delivered += 1
        self._queue.append(frame)
        self._backlog += len(frame)
        self._kick()
        return True

    def room(self) -> int:
        """Bytes a catch-up may read for this client now; 0: wait, and `drained` will come.

        Below half the limit, so that a client that drains slowly is served in pages of at
        least half the limit rather than in a read per frame.
        """
        if self._closing:
            return 0
        if self._backlog > self._resume_at:
            self._owed = True
            return 0
        return self._limit - self._backlog

    def put(self, frame: bytes) -> None:
        """Queue a reply (not an event): always taken, outside flow control."""
        if self._closing:
            return
        self._queue.append(frame)
        self._backlog += len(frame)
        self._kick()

    def close(self, code: int, reason: str) -> None:
        """Queue the close frame behind what is queued; nothing is queued after it."""
        if self._closing:
            return
        self._closing = True
        self._owed = False
        self.close_code = code
        self._queue.append(Close(code, reason))
        self._kick()

    def drop_queued(self) -> None:
        """Forget what waits (a stalled client): the stream still holds every event."""
        self._queue.clear()
        self._backlog = 0

    def client_gone(self, code: int) -> None:
        """The client disconnected: nothing more can be sent."""
        self._closing = True
        self._owed = False
        if self.close_code is None:
            self.close_code = code

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def backlog_bytes(self) -> int:
        return self._backlog

    async def finish(self, deadline: float) -> None:
        """Let the writer send what it can until `deadline` (loop time), then stop it."""
        writer = self._writer
        if writer is not None and writer.done() and not writer.cancelled():
            if writer.exception() is not None:
                log.error("writer failed", exc_info=writer.exception())
        elif writer is not None:
            if self._closing:
                await asyncio.wait({writer}, timeout=max(0.0, deadline - self._loop.time()))
            writer.cancel()
            try:
                await writer
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    # -- the writer ----------------------------------------------------------------------------

    def _kick(self) -> None:
        idle = self._idle
        if idle is not None:
            if not idle.done():
                idle.set_result(True)  # the writer is waiting for more: here it is
        elif self._writer is None or self._writer.done():
            self._progress_at = self._loop.time()
            self._writer = self._loop.create_task(self._write_queued())
            if self._stall_timer is None:
                self._stall_timer = self._loop.call_at(
                    self._progress_at + self._stall_s, self._check_stall
                )

    def _check_stall(self) -> None:
        """Runs every `stall_timeout_s` while the writer lives; idle clients cost no timer.

        A writer with nothing to send for that long ends (the next frame starts a new one); a
        writer whose send made no progress for that long means a stalled client.
        """
        self._stall_timer = None
        if self._writer is None or self._writer.done() or self._closing:
            return
        now, due = self._loop.time(), self._progress_at + self._stall_s
        if now >= due:
            if self._idle is None:
                self._on_stalled()
            elif not self._idle.done():
                self._idle.set_result(False)
            return
        self._stall_timer = self._loop.call_at(due, self._check_stall)

    async def _write_queued(self) -> None:
        """Send what is queued, waiting for more while traffic goes on; the only code that
        sends on this connection.

        The writer outlives an empty queue (until `_check_stall` ends it), so a client that
        receives a frame now and then does not cost a new task per frame.
        """
        queue, send, stats, loop = self._queue, self._send_frame, self._stats, self._loop
        latency = stats.latency
        try:
            while True:
                while queue:
                    item = queue.popleft()
                    if isinstance(item, Close):
                        stats.closes[item.code] += 1
                        await self._send_close(item.code, item.reason)
                        return
                    self._backlog -= len(item)
                    await send(item)
                    self._progress_at = self.last_sent_at = loop.time()
                    stats.frames_sent += 1
                    if not stats.frames_sent % LATENCY_SAMPLE_EVERY and item.startswith(
                        EVENT_PREFIX
                    ):
                        with contextlib.suppress(FrameError):
                            latency.observe_ms(time.time() * 1000 - frame_ts(item))
                    if self._owed and self._backlog <= self._resume_at:
                        self._owed = False
                        self._on_drained()
                if self._closing:
                    return
                self._idle = loop.create_future()
                try:
                    more = await self._idle
                finally:
                    self._idle = None
                if not more and not queue:
                    return
        except OSError as e:  # the client vanished mid-send (uvicorn's ClientDisconnected)
            log.debug("send failed: %s", e)
