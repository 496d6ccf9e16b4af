"""What waits to be sent to one client, and the flow control that keeps it bounded.

Everything for the client (event frames, replies, errors, finally the close frame) goes
through one queue, in order; nothing else sends on the connection. A send runs in the step
that queued it, as long as the socket takes it at once (nearly always); only a send that must
wait gets a task, which then sends what queued up behind it. An idle client costs no task.

Flow control lives here and nowhere else. Event frames are *offered*: past `limit_bytes`
waiting, an offer is refused, and the hub then serves that watch from the job's stream
later, at the client's pace. Once a refusal (or a "no room" answer) was given, the outbox owes
its owner a `drained` call, made when the queue falls to half the limit; the hub resumes
every watch it paused for this client then. Because the debt is recorded in the same step
that refuses, and paid by the only code that shrinks the queue, no wake-up can be lost.

Replies (pongs, `watching`, errors) are queued outside flow control, but they count: while
the queue is at its limit the client's next request is not read (`wait_for_room`), so a
client that asks without reading cannot grow it past one request's replies.

A client that accepts nothing for `stall_timeout_s` while frames wait is `stalled`: its owner
closes it (1013), or ends it at once when it was closing already and even that close cannot
go out. A client that reads slowly but steadily is never closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from service.aio import Continue, run_eagerly
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


SendFrame = Callable[[bytes], Coroutine[Any, Any, None]]
SendClose = Callable[[int, str], Coroutine[Any, Any, None]]
# Writes a frame in the caller's step if the connection takes it without waiting, else False
# (the server's fast path, when it has one): no coroutine, no queue entry per frame.
WriteNow = Callable[[bytes], bool]


class Outbox:
    """One client's send queue and its writer; flow control in bytes."""

    # Thousands of these live at once, mostly idle: slots keep each one small.
    __slots__ = (
        "_backlog",
        "_closing",
        "_limit",
        "_loop",
        "_on_drained",
        "_on_stalled",
        "_owed",
        "_progress_at",
        "_queue",
        "_resume_at",
        "_room",
        "_send_close",
        "_send_frame",
        "_sending",
        "_stall_s",
        "_stall_timer",
        "_stats",
        "_write_now",
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
        write_now: WriteNow | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._send_frame = send_frame
        self._write_now = write_now
        self._send_close = send_close
        self._limit = limit_bytes
        self._resume_at = limit_bytes // 2
        self._stall_s = stall_timeout_s
        self._stats = stats
        self._on_drained = on_drained
        self._on_stalled = on_stalled
        # Only while something waits: nearly every frame is written at once, and an empty
        # deque is 0.6 KiB on each of thousands of idle sockets.
        self._queue: deque[bytes | Close] | None = None
        self._backlog = 0
        self._owed = False  # a refusal was given: call `on_drained` once the queue is low
        self._closing = False
        self._writer: asyncio.Task[None] | None = None  # only while a send has to wait
        self._sending = False  # sends are under way in this very step
        self._stall_timer: asyncio.TimerHandle | None = None
        self._room: asyncio.Event | None = None  # only while a reader waits for room
        # Given by the session that makes it: asyncio asks the OS for the process id on every
        # `get_running_loop`, three system calls per connection for the same answer.
        self._loop = loop or asyncio.get_running_loop()
        self._progress_at = self.last_sent_at = self._loop.time()
        self.close_code: int | None = None

    # -- what the hub and the protocol queue ---------------------------------------------------

    def offer(self, frame: bytes) -> bool:
        """Queue an event frame if the client has room; False: not queued, `drained` will come."""
        if self._backlog >= self._limit or self._closing:
            self._owed = not self._closing
            return False
        self._stats.events_delivered += 1
        self._queue_or_write(frame)
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
        self._queue_or_write(frame)

    def _queue_or_write(self, frame: bytes) -> None:
        write_now = self._write_now
        if (
            write_now is not None
            and not self._queue
            and self._writer is None
            and not self._sending
            and write_now(frame)
        ):
            self._sent(frame)
            return
        self._enqueue(frame)
        self._backlog += len(frame)
        self._kick()

    def _enqueue(self, item: bytes | Close) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(item)

    @property
    def full(self) -> bool:
        """At the limit: the client's next request waits (`wait_for_room`)."""
        return self._backlog >= self._limit and not self._closing

    async def wait_for_room(self) -> None:
        """Return once the queue is below its limit, or closing."""
        while self.full:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    def _wake_reader(self) -> None:
        if self._room is not None and not self.full:
            self._room.set()

    def close(self, code: int, reason: str) -> None:
        """Queue the close frame behind what is queued; nothing is queued after it."""
        if self._closing:
            return
        self._closing = True
        self._owed = False
        self.close_code = code
        self._enqueue(Close(code, reason))
        self._wake_reader()
        self._kick()

    def drop_queued(self) -> None:
        """Forget what waits (a stalled client): the stream still holds every event."""
        self._queue = None
        self._backlog = 0
        self._wake_reader()

    def client_gone(self, code: int) -> None:
        """The client disconnected: nothing more can be sent."""
        self._closing = True
        self._owed = False
        if self.close_code is None:
            self.close_code = code
        self._wake_reader()

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def backlog_bytes(self) -> int:
        return self._backlog

    async def finish(self, deadline: float) -> None:
        """Let a waiting send go on until `deadline` (loop time), then stop it."""
        writer = self._writer
        if writer is not None:
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

    def release(self) -> None:
        """Its owner is done with it (after `finish`): nothing more is queued or sent, and the
        callables it was given are let go. They are its owners' methods (the session's sends,
        the watches' callbacks, the server's write), so each connection was a reference cycle
        that only a full collection freed: 0.25 s of the gateway's CPU in one pause every
        12,000 connections, measured, where reference counting frees it as the client goes.
        """
        self._closing = True
        self._owed = False
        self._queue = None
        self._backlog = 0
        self._send_frame = self._send_close = _send_nothing
        self._on_drained = self._on_stalled = _nothing
        self._write_now = None

    # -- sending ------------------------------------------------------------------------------

    def _kick(self) -> None:
        """Send what is queued now, unless a send is under way (its task sends the rest)."""
        if self._writer is None and not self._sending:
            self._send_now()

    def _send_now(self) -> None:
        """Send queued items in the caller's step, as long as each send completes at once.

        Almost every send does (the socket has room), and a task per frame would cost more
        than the frame; the first send that must wait goes on in a task, which sends the
        rest in order.
        """
        write_now = self._write_now
        self._sending = True
        try:
            while self._queue and self._writer is None:
                item = self._queue.popleft()
                if write_now is not None and type(item) is bytes and write_now(item):
                    self._backlog -= len(item)
                    self._sent(item)
                    continue
                try:
                    pending = run_eagerly(self._start_send(item))
                except Exception as e:
                    self._failed(e)
                    return
                if pending is not None:
                    self._writer = self._loop.create_task(self._write_rest(pending, item))
                    self._progress_at = self._loop.time()  # the wait starts now
                    if self._stall_timer is None:
                        self._stall_timer = self._loop.call_at(
                            self._progress_at + self._stall_s, self._check_stall
                        )
                    return
                self._sent(item)
        finally:
            self._sending = False
            if not self._queue:
                self._queue = None

    def _start_send(self, item: bytes | Close) -> Coroutine[Any, Any, None]:
        if isinstance(item, Close):
            self._stats.closes[item.code] += 1
            return self._send_close(item.code, item.reason)
        self._backlog -= len(item)
        return self._send_frame(item)

    def _sent(self, item: bytes | Close) -> None:
        if isinstance(item, Close):
            return
        stats = self._stats
        self._progress_at = self.last_sent_at = self._loop.time()
        stats.frames_sent += 1
        if not stats.frames_sent % LATENCY_SAMPLE_EVERY and item.startswith(EVENT_PREFIX):
            with contextlib.suppress(FrameError):
                stats.latency.observe_ms(time.time() * 1000 - frame_ts(item))
        if self._owed and self._backlog <= self._resume_at:
            self._owed = False
            self._on_drained()
        if self._room is not None:
            self._wake_reader()

    async def _write_rest(self, pending: Continue[None], item: bytes | Close) -> None:
        """Finish a send that had to wait, then send what queued up behind it."""
        try:
            await pending
            self._sent(item)
            while self._queue:
                item = self._queue.popleft()
                await self._start_send(item)
                self._sent(item)
        except Exception as e:
            self._failed(e)
        finally:
            self._writer = None
            if not self._queue:
                self._queue = None

    def _failed(self, error: Exception) -> None:
        """A send failed: the client is gone (uvicorn's ClientDisconnected is an OSError)."""
        if isinstance(error, OSError):
            log.debug("send failed: %s", error)
        else:
            log.error("sending to a client failed; dropping the connection's queue", exc_info=error)
        self._closing = True
        self._owed = False
        self.drop_queued()

    def _check_stall(self) -> None:
        """Runs every `stall_timeout_s` while a send waits; idle clients cost no timer."""
        self._stall_timer = None
        if self._writer is None:
            return
        due = self._progress_at + self._stall_s
        if self._loop.time() >= due:
            # Closing or not: a close that cannot be sent either is the owner's to end.
            self._on_stalled()
            return
        self._stall_timer = self._loop.call_at(due, self._check_stall)


async def _send_nothing(*_: object) -> None:
    """A released outbox's send: the client is gone."""


def _nothing() -> None:
    """A released outbox's callback: its owner is gone."""
