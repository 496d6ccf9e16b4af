"""One WebSocket client: its reader, its writer, and the watches it holds.

The connection's own task reads; a writer task runs only while there is something to send, so
an idle socket costs a timer and no task of its own. Only the writer sends on the socket.
Everything for the client (event frames, replies, errors, and finally the close frame) goes
through one bounded queue that the writer drains, so the delivery side never waits on a
client: `deliver` appends and returns. A client whose queue grows past `MAX_SEND_QUEUE_BYTES`
is closed with 1013; its queued frames are dropped and the close frame goes behind what was
already handed to the socket, so a client that reads again sees it and can resume with `after`.

Close codes: 1000 idle, 1001 gateway shutting down, 1008 policy (bad frames, origin),
1009 frame too large (uvicorn enforces the size), 1011 internal error, 1013 too slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from service import codec, tokens
from service.codec import ts_of_frame
from service.config import Settings
from service.delivery.base import Delivery
from service.gateway.protocol import BadFrame, PingOp, UnwatchOp, WatchOp, parse
from service.model import ErrorCode
from service.stats import GatewayStats

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CLOSE_IDLE = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
BAD_FRAME_WINDOW_S = 60.0
# Timing every send costs a fifth of the gateway's throughput; one in eight shows the same
# distribution at a fraction of the cost.
LATENCY_SAMPLE_EVERY = 8


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class Session:
    """Implements `Watcher` for the delivery; runs until the socket closes."""

    # Thousands of these live at once, mostly idle: slots keep each one small.
    __slots__ = (
        "__weakref__",
        "_backlog",
        "_bad_frames",
        "_close_deadline",
        "_closing",
        "_delivery",
        "_last_activity",
        "_loop",
        "_paused_delivery",
        "_queue",
        "_read_timeout",
        "_receive",
        "_send",
        "_settings",
        "_stats",
        "_writer",
        "close_code",
        "watching",
    )

    def __init__(
        self,
        receive: Receive,
        send: Send,
        delivery: Delivery,
        settings: Settings,
        stats: GatewayStats,
    ) -> None:
        self._receive = receive
        self._send = send
        self._delivery = delivery
        self._settings = settings
        self._stats = stats
        self._queue: deque[bytes | _Close] = deque()
        self._backlog = 0
        self._writer: asyncio.Task[None] | None = None
        self._read_timeout: asyncio.Timeout | None = None
        self._closing = False  # a close frame is queued, or the client is gone
        self._close_deadline = 0.0
        self._paused_delivery = False
        self.watching: set[str] = set()
        self._bad_frames: deque[float] | None = None
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self.close_code: int | None = None

    # -- Watcher -------------------------------------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        if self._closing:
            return
        self._stats.events_delivered += 1
        self._queue.append(frame)
        self._backlog += len(frame)
        if self._backlog > self._settings.max_send_queue_bytes:
            self._too_slow()
        else:
            self._kick_writer()

    def watch_failed(self, job: str, code: ErrorCode, message: str) -> None:
        self._reply(codec.error(code, message, job))

    def watch_ended(self, job: str) -> None:
        self.watching.discard(job)

    def watch_finished(self, job: str) -> None:
        self._reply(codec.unwatched(job))

    @property
    def backlog_bytes(self) -> int:
        return self._backlog

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Queue the close frame behind what is queued; the writer sends it and stops.

        The reader is woken so the session ends within `SHUTDOWN_GRACE_S` even when the
        client never reads again.
        """
        if self._closing:
            return
        self._closing = True
        self.close_code = code
        self._close_deadline = self._loop.time() + self._settings.shutdown_grace_s
        self._queue.append(_Close(code, reason))
        self._kick_writer()
        if self._read_timeout is not None:
            self._read_timeout.reschedule(self._close_deadline)

    def _too_slow(self) -> None:
        self._stats.slow_client_closes += 1
        log.info("closing a client that reads too slowly (%d bytes queued)", self._backlog)
        self._queue.clear()
        self._backlog = 0
        self.close(CLOSE_TRY_LATER, "too slow: reconnect and resume with 'after'")

    async def run(self) -> None:
        """Serve the socket (already accepted) until either side closes it.

        The reading happens in this (the connection's) task; a writer task exists only while
        there is something to send, so an idle socket costs no task of its own.
        """
        try:
            await self._read_loop()
        finally:
            writer = self._writer
            if writer is not None and not writer.done():
                if self._closing:
                    # Give the close frame what is left of its bounded time to go out.
                    await asyncio.wait(
                        {writer}, timeout=max(0.0, self._close_deadline - self._loop.time())
                    )
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            for job in list(self.watching):
                self._delivery.unwatch(job, self)
            self.watching.clear()

    # -- writing -------------------------------------------------------------------------------

    def _reply(self, frame: bytes) -> None:
        if self._closing:
            return
        self._queue.append(frame)
        self._backlog += len(frame)
        self._kick_writer()

    def _kick_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write_queued())

    async def _write_queued(self) -> None:
        """Send everything queued, then end; the only code that sends on this socket."""
        queue, send, stats = self._queue, self._send, self._stats
        latency = stats.latency
        low_water = self._settings.max_send_queue_bytes // 4
        high_water = self._settings.max_send_queue_bytes // 2
        try:
            while queue:
                item = queue.popleft()
                if isinstance(item, _Close):
                    self._stats.closes[item.code] += 1
                    await send(
                        {"type": "websocket.close", "code": item.code, "reason": item.reason}
                    )
                    return
                self._backlog -= len(item)
                await send({"type": "websocket.send", "text": item.decode()})
                self._last_activity = self._loop.time()
                stats.frames_sent += 1
                if not stats.frames_sent % LATENCY_SAMPLE_EVERY and item.startswith(b'{"seq":'):
                    latency.observe_ms(time.time() * 1000 - ts_of_frame(item))
                if self._backlog > high_water:
                    self._paused_delivery = True
                elif self._paused_delivery and self._backlog < low_water:
                    self._paused_delivery = False
                    self._delivery.drained(self)
        except OSError as e:  # the client vanished mid-send (uvicorn's ClientDisconnected)
            log.debug("send failed: %s", e)

    # -- reading -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        idle_s = self._settings.idle_timeout_s
        receive = self._receive
        while True:
            now = self._loop.time()
            if self._closing:
                deadline = self._close_deadline
                if now >= deadline:
                    return
            else:
                deadline = self._last_activity + idle_s
                if now >= deadline:
                    self.close(CLOSE_IDLE, "idle timeout")
                    continue
            try:
                async with asyncio.timeout_at(deadline) as self._read_timeout:
                    message = await receive()
            except TimeoutError:
                continue
            finally:
                self._read_timeout = None
            kind = message["type"]
            if kind == "websocket.disconnect":
                self._closing = True
                if self.close_code is None:
                    self.close_code = message.get("code", 1005)
                return
            if kind != "websocket.receive" or self._closing:
                continue
            self._last_activity = self._loop.time()
            text = message.get("text")
            if text is None:
                self._bad_frame(BadFrame("frames must be text (JSON), not binary"))
                continue
            try:
                op = parse(text)
            except BadFrame as e:
                self._bad_frame(e)
                continue
            self._handle(op)

    def _handle(self, op: WatchOp | UnwatchOp | PingOp) -> None:
        if isinstance(op, PingOp):
            self._reply(codec.PONG)
        elif isinstance(op, WatchOp):
            self._watch(op)
        elif op.job in self.watching:
            self._delivery.unwatch(op.job, self)
            self.watching.discard(op.job)
            self._reply(codec.unwatched(op.job))
        else:
            self._reply(
                codec.error(ErrorCode.NOT_FOUND, "this socket does not watch that job", op.job)
            )

    def _watch(self, op: WatchOp) -> None:
        # The token comes first: a wrong one learns nothing about the job.
        if not tokens.verify(op.job, op.token, self._settings.token_keys):
            self._reply(
                codec.error(ErrorCode.UNAUTHORIZED, "the token is not valid for this job", op.job)
            )
            return
        if op.job in self.watching:
            self._delivery.unwatch(op.job, self)  # watching again: start over from `after`
        elif len(self.watching) >= self._settings.max_watches_per_socket:
            limit = self._settings.max_watches_per_socket
            self._reply(
                codec.error(
                    ErrorCode.TOO_MANY_WATCHES, f"this socket already watches {limit} jobs", op.job
                )
            )
            return
        self.watching.add(op.job)
        self._reply(codec.watching(op.job))
        self._delivery.watch(op.job, self, op.after_seq)

    def _bad_frame(self, error: BadFrame) -> None:
        self._stats.bad_frames += 1
        now = self._loop.time()
        if self._bad_frames is None:
            self._bad_frames = deque()
        window = self._bad_frames
        window.append(now)
        while window and window[0] < now - BAD_FRAME_WINDOW_S:
            window.popleft()
        if len(window) > self._settings.max_bad_frames_per_min:
            self.close(CLOSE_POLICY, "too many bad frames")
            return
        self._reply(codec.error(ErrorCode.BAD_REQUEST, error.message, error.job))


class Sessions:
    """Every open session of this process, so shutdown can close them all with 1001."""

    def __init__(self) -> None:
        self.open: set[Session] = set()
        self.shutting_down = False
        self._done = asyncio.Event()

    def add(self, session: Session) -> None:
        self.open.add(session)

    def remove(self, session: Session) -> None:
        self.open.discard(session)
        if not self.open:
            self._done.set()

    async def close_all(self, code: int, timeout_s: float) -> None:
        self.shutting_down = True
        if not self.open:
            return
        log.info("closing %d WebSocket(s) with %d", len(self.open), code)
        self._done.clear()
        for session in list(self.open):
            session.close(code, "server shutting down")
        try:
            await asyncio.wait_for(self._done.wait(), timeout_s)
        except TimeoutError:
            log.warning("%d WebSocket(s) did not close in %.1fs", len(self.open), timeout_s)
