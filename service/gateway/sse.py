"""Server-Sent Events: `GET /jobs/{job}/events`, one job's events over plain HTTP.

A second transport beside the WebSocket, over the same hub: an `SseStream` is the `Watcher`
of one job, and everything it sends goes through an `Outbox` (the same flow control, stall
detection and single writer as a WebSocket client). What differs is only the framing (each
frame becomes an SSE message, `service.codec.sse_message`), the start (token, limits and the
job's existence are HTTP answers, before any byte of the stream), resume (`Last-Event-ID`),
keepalive comments, and the end: after the terminal event, after `gone`, on shutdown or idle
timeout the response simply ends, and a browser's `EventSource` reconnects with the id it
last received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from service import codec
from service.config import Settings
from service.delivery.base import Delivery
from service.gateway.errors import HTTPFailure
from service.gateway.http_protocol import RESET_EXTENSION
from service.gateway.jobs import read_position
from service.gateway.outbox import Outbox
from service.gateway.protocol import CloseCode, origin_allowed
from service.gateway.running import Gateway
from service.model import ErrorCode, JobStatus
from service.stats import GatewayStats

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    # Neither a cache nor a buffering proxy may hold the stream back.
    (b"cache-control", b"no-cache, no-store, no-transform"),
    (b"x-accel-buffering", b"no"),
]


class SseStream:
    """One job's event stream to one HTTP client: the `Watcher` the hub delivers to."""

    __slots__ = (
        "__weakref__",
        "_delivery",
        "_done",
        "_end_by",
        "_last_event_at",
        "_loop",
        "_send",
        "_settings",
        "_stats",
        "_wake",
        "job",
        "outbox",
    )

    def __init__(
        self, job: str, send: Send, delivery: Delivery, settings: Settings, stats: GatewayStats
    ) -> None:
        self.job = job
        self._send = send
        self._delivery = delivery
        self._settings = settings
        self._stats = stats
        self.outbox = Outbox(
            self._send_frame,
            self._send_end,
            limit_bytes=settings.max_send_queue_bytes,
            stall_timeout_s=settings.send_stall_timeout_s,
            stats=stats,
            on_drained=lambda: delivery.drained(self),
            on_stalled=self._stalled,
        )
        self._done = asyncio.Event()
        self._wake = asyncio.Event()
        self._end_by: float | None = None  # loop time by which the response must end
        self._loop = asyncio.get_running_loop()
        self._last_event_at = self._loop.time()

    # -- the transport -------------------------------------------------------------------------

    async def _send_frame(self, frame: bytes) -> None:
        # JSON frames (events, errors) become SSE messages; SSE lines of our own pass as they are.
        body = codec.sse_message(frame) if frame.startswith(b"{") else frame
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def _send_end(self, _code: int, _reason: str) -> None:
        try:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._done.set()
            self._wake.set()

    def close(self, code: CloseCode, reason: str = "", *, job_ended: bool = False) -> None:
        """End the response after what is queued. After the job's end (`job_ended`) a client
        that reads slowly gets all of it (stall detection ends one that reads nothing); on
        shutdown, idle or a stall the end must be sent within SHUTDOWN_GRACE_S."""
        if not job_ended:
            grace_s = 0.0 if code is CloseCode.TRY_LATER else self._settings.shutdown_grace_s
            end_by = self._loop.time() + grace_s
            self._end_by = end_by if self._end_by is None else min(self._end_by, end_by)
        self.outbox.close(code, reason)
        self._wake.set()

    async def run(self, receive: Receive, reset: Callable[[], None] | None = None) -> None:
        """Until the response ends or the client goes: keepalives, idle timeout, disconnect.
        When its end cannot be sent in time the connection is `reset` (the server's)."""
        outbox, settings = self.outbox, self._settings
        disconnected = asyncio.ensure_future(_disconnect(receive))
        try:
            while not self._done.is_set():
                now = self._loop.time()
                wake_at: float | None
                if outbox.closing:
                    if self._end_by is not None and now >= self._end_by:
                        log.info("resetting an event stream whose end could not be sent in time")
                        if reset is not None:
                            reset()
                        return
                    wake_at = self._end_by
                else:
                    idle_at = self._last_event_at + settings.idle_timeout_s
                    if now >= idle_at:
                        self.close(CloseCode.NORMAL, "idle timeout")
                        continue
                    keepalive_at = outbox.last_sent_at + settings.sse_keepalive_s
                    if now >= keepalive_at:
                        if outbox.backlog_bytes == 0:
                            outbox.put(codec.SSE_KEEPALIVE)
                            continue
                        keepalive_at = now + settings.sse_keepalive_s  # a send waits already
                    wake_at = min(keepalive_at, idle_at)
                self._wake.clear()
                woken = asyncio.ensure_future(self._wake.wait())
                finished, _ = await asyncio.wait(
                    {woken, disconnected},
                    timeout=None if wake_at is None else max(0.0, wake_at - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken.cancel()
                if disconnected in finished:
                    outbox.client_gone(1001)
                    return
        finally:
            disconnected.cancel()
            await outbox.finish(self._loop.time())
            self._delivery.unwatch(self.job, self)

    async def end_with_internal_error(
        self, receive: Receive, reset: Callable[[], None] | None
    ) -> None:
        """After a failure: the contract's `internal` error, then the end of the response
        (counted as a 1011 close), sent within SHUTDOWN_GRACE_S."""
        with contextlib.suppress(Exception):
            self._delivery.unwatch(self.job, self)
        self.outbox.put(codec.error(ErrorCode.INTERNAL, "internal error", self.job))
        self.close(CloseCode.INTERNAL_ERROR, "internal error")
        if not self._done.is_set():
            await self.run(receive, reset)

    # -- Watcher -------------------------------------------------------------------------------

    def deliver(self, frame: bytes) -> bool:
        if self.outbox.offer(frame):
            self._last_event_at = self._loop.time()
            return True
        return False

    def room(self) -> int:
        return self.outbox.room()

    def watch_failed(self, job: str, code: ErrorCode, message: str) -> None:
        self.outbox.put(codec.error(code, message, job))

    def watch_ended(self, job: str) -> None:
        self.close(CloseCode.NORMAL, "the job ended", job_ended=True)

    def watch_finished(self, job: str) -> None:
        self.close(CloseCode.NORMAL, "the job had ended", job_ended=True)

    def _stalled(self) -> None:
        if self.outbox.closing:
            # Its end is queued behind what it does not read (a job that ended): end it now.
            self._end_by = self._loop.time()
            self._wake.set()
            return
        self._stats.slow_client_closes += 1
        log.info(
            "ending an event stream that accepted nothing for %.0fs",
            self._settings.send_stall_timeout_s,
        )
        self.outbox.drop_queued()  # the stream still holds them; EventSource resumes
        self.close(CloseCode.TRY_LATER, "accepted nothing for too long")


async def _disconnect(receive: Receive) -> None:
    """Returns once the client has gone (the request has no body left to read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class SseEndpoint:
    """`GET /jobs/{job}/events`: checks, then streams until the job ends or the client goes."""

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        gateway: Gateway = scope["app"].state.gateway
        settings, stats, sessions = gateway.settings, gateway.stats, gateway.sessions
        job = scope["path_params"]["job"]
        after_seq = await self._check(gateway, scope, job)
        if after_seq is None:  # the job had ended before that position: nothing will follow
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        stream = SseStream(job, send, gateway.delivery, settings, stats)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        sessions.add(stream)
        stats.sse_open += 1
        stats.sse_total += 1
        reset = scope.get("extensions", {}).get(RESET_EXTENSION)
        try:
            stream.outbox.put(codec.SSE_RETRY)
            gateway.delivery.watch(job, stream, after_seq)
            await stream.run(receive, reset)
        except Exception:
            # A bug of ours, not the client's doing: this stream alone ends, saying so (a
            # WebSocket gets 1011); its EventSource resumes with Last-Event-ID.
            log.exception("an event stream failed; ending it with an internal error")
            await stream.end_with_internal_error(receive, reset)
        finally:
            stats.sse_open -= 1
            sessions.remove(stream)
            stream.outbox.release()  # it holds the stream's methods: no cycle is left behind

    async def _check(self, gateway: Gateway, scope: dict[str, Any], job: str) -> int | None:
        """The position to stream from (None: the job ended at or before it), or an HTTP
        error: the same answers as `GET /jobs/{job}`, and 503 when at capacity."""
        settings = gateway.settings
        query = _query(scope)
        after = _header(scope, b"last-event-id") or query.get("after")
        after_seq = read_position(job, query.get("token"), after, settings)
        if not origin_allowed(scope, settings.allowed_origins):
            raise HTTPFailure(403, ErrorCode.FORBIDDEN, "origin not allowed")
        if gateway.sessions.shutting_down:
            raise HTTPFailure(503, ErrorCode.UNAVAILABLE, "server shutting down, retry")
        if gateway.sessions.at_capacity(settings.max_sockets):
            log.warning("refusing an event stream: %d connections open", settings.max_sockets)
            raise HTTPFailure(503, ErrorCode.CAPACITY, "server at capacity, retry later")
        position = await gateway.intake.store.position(job)
        if position is None:
            raise HTTPFailure(
                404, ErrorCode.NOT_FOUND, "no such job (unknown, or its results expired)"
            )
        status, last_seq = position
        if status in (JobStatus.DONE, JobStatus.FAILED) and after_seq >= last_seq:
            return None
        return after_seq


def _query(scope: dict[str, Any]) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return dict(parse_qsl(raw, keep_blank_values=True))


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1")).strip() or None
    return None
