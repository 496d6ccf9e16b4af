"""The WebSocket transport: `/ws` as a raw ASGI app, one `WebSocketSession` per connection.

The connection's own task reads; everything sent goes through the client's outbox and its
single writer (see `outbox.py`); what a frame means is the watch protocol's (`watches.py`).
Skipping Starlette's router for `/ws` keeps an idle socket a few KiB smaller, which adds up
over tens of thousands of sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.config import Settings
from service.delivery.base import Delivery
from service.gateway.http_protocol import cancelled
from service.gateway.protocol import BadFrame, CloseCode, origin_allowed
from service.gateway.running import Gateway
from service.gateway.watches import Watches
from service.gateway.ws_protocol import FAST_SEND_EXTENSION, FAST_TEXT, WRITE_NOW, peer_of
from service.stats import GatewayStats

log = logging.getLogger(__name__)

# Client messages read in a row before the session lets the event loop run something else.
YIELD_EVERY = 32

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class WebSocketSession:
    """One accepted WebSocket: reads it until either side closes, with an idle timeout.

    The deadline of a read (the idle timeout, or the close's grace period) is one timer for
    the connection, moved when it fires early: `asyncio.timeout_at` around every read made a
    timer, a context object and two `getpid()` calls each time (asyncio checks the process
    on every `get_running_loop`).
    """

    __slots__ = (
        "__weakref__",
        "_cancelling",
        "_close_deadline",
        "_expired",
        "_last_read",
        "_loop",
        "_reader",
        "_reading",
        "_receive",
        "_send",
        "_settings",
        "_timer",
        "outbox",
        "peer",
        "watches",
    )

    def __init__(
        self,
        receive: Receive,
        send: Send,
        delivery: Delivery,
        settings: Settings,
        stats: GatewayStats,
        *,
        fast_send: dict[str, Any] | None = None,
        peer: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.peer = peer  # the client's address, for log lines
        self._receive = receive
        self._send = send
        self._settings = settings
        self._loop = loop or asyncio.get_running_loop()
        self.watches = Watches(
            self._send_text if fast_send is None else self._send_bytes,
            self._send_close,
            close=self.close,
            delivery=delivery,
            settings=settings,
            stats=stats,
            write_now=None if fast_send is None else fast_send.get(WRITE_NOW),
            loop=self._loop,
        )
        self.outbox = self.watches.outbox  # what waits for this client, and its writer
        self._close_deadline = 0.0
        self._last_read = self._loop.time()
        self._reader: asyncio.Task[Any] | None = None  # the task that reads (run's)
        self._timer: asyncio.TimerHandle | None = None  # at or before the read's deadline
        self._reading = False  # the reader waits for the client (or for room to reply)
        self._expired = False  # the timer cancelled the read
        self._cancelling = 0  # the reader's cancel requests before the timer's own

    async def _send_bytes(self, frame: bytes) -> None:
        """The stored UTF-8 bytes as they are: the server writes them (WEBSOCKET_SEND=fast)."""
        await self._send({"type": "websocket.send", FAST_TEXT: frame})

    async def _send_text(self, frame: bytes) -> None:
        await self._send({"type": "websocket.send", "text": frame.decode()})

    async def _send_close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    @property
    def close_code(self) -> int | None:
        return self.outbox.close_code

    def close(self, code: CloseCode, reason: str = "") -> None:
        """Queue the close frame behind what is queued; the writer sends it and stops.

        The reader is woken so the session ends within `SHUTDOWN_GRACE_S` even when the
        client never reads again.
        """
        outbox = self.outbox
        if outbox.closing:
            return
        outbox.close(code, reason)
        self._close_deadline = self._loop.time() + self._settings.shutdown_grace_s
        if self._timer is not None and self._timer.when() > self._close_deadline:
            self._timer = cancelled(self._timer)
            self._arm(self._close_deadline)

    async def run(self) -> None:
        """Serve the socket (already accepted) until either side closes it."""
        self._reader = asyncio.current_task(self._loop)
        try:
            await self._read_loop()
        except Exception:
            # A bug of ours, not the client's doing: this client alone is closed with 1011
            # (it may reconnect and resume), the rest of the gateway goes on.
            log.exception(
                "a WebSocket session failed; closing it with 1011",
                extra={"code": int(CloseCode.INTERNAL_ERROR), "socket": self.peer},
            )
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._timer = cancelled(self._timer)
            try:
                await self.outbox.finish(self._close_deadline)
            finally:
                self.watches.end()  # even when cancelled while the last send waits

    def _deadline(self) -> float:
        """When the current read ends: the close's grace period, or the idle timeout."""
        if self.outbox.closing:
            return self._close_deadline
        return max(self._last_read, self.outbox.last_sent_at) + self._settings.idle_timeout_s

    def _arm(self, deadline: float) -> None:
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if self._loop.time() < deadline:
            self._arm(deadline)  # the client or a delivery moved it
        elif self._reading and not self._expired and self._reader is not None:
            self._expired = True
            self._cancelling = self._reader.cancelling()
            self._reader.cancel()
        # else: the read loop is between reads and sees the deadline itself

    async def _read_loop(self) -> None:
        receive, watches, outbox = self._receive, self.watches, self.outbox
        reader = self._reader
        read = 0
        while True:
            deadline = self._deadline()
            if self._loop.time() >= deadline:
                if outbox.closing:
                    return
                self.close(CloseCode.NORMAL, "idle timeout")
                continue
            self._arm(deadline)
            self._reading = True
            try:
                if outbox.full:  # replies count: no request is read while they cannot queue
                    await outbox.wait_for_room()
                message = await receive()
            except asyncio.CancelledError:
                if not self._expired or reader is None or reader.uncancel() > self._cancelling:
                    raise  # not (only) the deadline: the task itself is being cancelled
                self._expired = False
                continue
            finally:
                self._reading = False
            kind = message["type"]
            if kind == "websocket.disconnect":
                outbox.client_gone(message.get("code", 1005))
                return
            if kind != "websocket.receive" or outbox.closing:
                continue
            self._last_read = self._loop.time()
            read += 1
            if not read % YIELD_EVERY:
                # uvicorn hands over all the messages of one read at once (thousands of
                # small ones in a flood): let the other clients' sends in between.
                await asyncio.sleep(0)
            text = message.get("text")
            if text is None:
                watches.bad_frame(BadFrame("frames must be text (JSON), not binary"))
            else:
                watches.receive_text(text)


class WebSocketEndpoint:
    def __init__(self, gateway: Callable[[], Gateway]) -> None:
        self._gateway = gateway

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        gateway = self._gateway()
        settings, stats, sessions = gateway.settings, gateway.stats, gateway.sessions
        await send({"type": "websocket.accept"})
        # The server's fast send path, when it offers one (ours, under WEBSOCKET_SEND=fast).
        fast = (scope.get("extensions") or {}).get(FAST_SEND_EXTENSION)
        peer = peer_of(scope.get("client"))
        session = WebSocketSession(
            receive,
            send,
            gateway.delivery,
            settings,
            stats,
            fast_send=fast,
            peer=peer,
            loop=gateway.loop,
        )
        if not origin_allowed(scope, settings.allowed_origins):
            session.close(CloseCode.POLICY, "origin not allowed")
        elif sessions.at_capacity(settings.max_sockets):
            log.warning(
                "refusing a WebSocket: %d connections open, the limit",
                settings.max_sockets,
                extra={"socket": peer, "code": int(CloseCode.TRY_LATER)},
            )
            session.close(CloseCode.TRY_LATER, "server at capacity, retry later")
        sessions.add(session)  # closed with 1001 if shutdown began
        stats.sockets_open += 1
        stats.sockets_total += 1
        try:
            await session.run()
        finally:
            stats.sockets_open -= 1
            sessions.remove(session)
