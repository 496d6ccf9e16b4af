"""One WebSocket client: its reader, its outbox, and the watches it holds.

The connection's own task reads; the outbox (`service.gateway.outbox`) owns everything that
is sent, with its single writer task and the flow control for slow readers. The delivery
never waits on a client: it offers frames to the outbox, and a client with no room is served
later from the stream, at its own pace.

Close codes: 1000 idle, 1001 gateway shutting down, 1008 policy (bad frames, origin),
1009 frame too large (uvicorn enforces the size), 1011 internal error, 1013 the client
accepted nothing for `SEND_STALL_TIMEOUT_S` (or the gateway is full).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service import codec, tokens
from service.config import Settings
from service.delivery.base import Delivery
from service.gateway.outbox import Outbox
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


class Session:
    """Implements `Watcher` for the delivery; runs until the socket closes."""

    # Thousands of these live at once, mostly idle: slots keep each one small.
    __slots__ = (
        "__weakref__",
        "_bad_frames",
        "_close_deadline",
        "_delivery",
        "_last_read",
        "_loop",
        "_read_timeout",
        "_receive",
        "_send",
        "_settings",
        "_stats",
        "outbox",
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
        self.outbox = Outbox(
            self._send_text,
            self._send_close,
            limit_bytes=settings.max_send_queue_bytes,
            stall_timeout_s=settings.send_stall_timeout_s,
            stats=stats,
            on_drained=self._drained,
            on_stalled=self._stalled,
        )
        self._read_timeout: asyncio.Timeout | None = None
        self._close_deadline = 0.0
        self.watching: set[str] = set()
        self._bad_frames: deque[float] | None = None
        self._loop = asyncio.get_running_loop()
        self._last_read = self._loop.time()

    async def _send_text(self, frame: bytes) -> None:
        await self._send({"type": "websocket.send", "text": frame.decode()})

    async def _send_close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    @property
    def close_code(self) -> int | None:
        return self.outbox.close_code

    # -- Watcher -------------------------------------------------------------------------------

    def deliver(self, frame: bytes) -> bool:
        return self.outbox.offer(frame)

    def room(self) -> int:
        return self.outbox.room()

    def watch_failed(self, job: str, code: ErrorCode, message: str) -> None:
        self.outbox.put(codec.error(code, message, job))

    def watch_ended(self, job: str) -> None:
        self.watching.discard(job)

    def watch_finished(self, job: str) -> None:
        self.outbox.put(codec.unwatched(job))

    def _drained(self) -> None:
        self._delivery.drained(self)

    def _stalled(self) -> None:
        self._stats.slow_client_closes += 1
        log.info(
            "closing a client that accepted nothing for %.0fs (%d bytes waiting)",
            self._settings.send_stall_timeout_s,
            self.outbox.backlog_bytes,
        )
        self.outbox.drop_queued()  # the stream still holds them; the client resumes with after
        self.close(CLOSE_TRY_LATER, "accepted nothing for too long: reconnect and resume")

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Queue the close frame behind what is queued; the writer sends it and stops.

        The reader is woken so the session ends within `SHUTDOWN_GRACE_S` even when the
        client never reads again.
        """
        if self.outbox.closing:
            return
        self.outbox.close(code, reason)
        self._close_deadline = self._loop.time() + self._settings.shutdown_grace_s
        if self._read_timeout is not None:
            self._read_timeout.reschedule(self._close_deadline)

    async def run(self) -> None:
        """Serve the socket (already accepted) until either side closes it."""
        try:
            await self._read_loop()
        finally:
            await self.outbox.finish(self._close_deadline)
            for job in list(self.watching):
                self._delivery.unwatch(job, self)
            self.watching.clear()

    def _reply(self, frame: bytes) -> None:
        self.outbox.put(frame)

    # -- reading -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        idle_s = self._settings.idle_timeout_s
        receive, outbox = self._receive, self.outbox
        while True:
            now = self._loop.time()
            if outbox.closing:
                deadline = self._close_deadline
                if now >= deadline:
                    return
            else:
                deadline = max(self._last_read, outbox.last_sent_at) + idle_s
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
                outbox.client_gone(message.get("code", 1005))
                return
            if kind != "websocket.receive" or outbox.closing:
                continue
            self._last_read = self._loop.time()
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
