"""uvicorn's sans-I/O WebSocket protocol, with what one cheap socket may cost bounded.

What uvicorn's `websockets-sansio` protocol does below the application, and what changes here:

- It answers every ping at once, whether or not the client reads: a client that sends pings
  and reads nothing grew the gateway by 25 MiB/s. Here a ping is not answered while the send
  side is full (the transport above its high-water mark), and a send side that stays full for
  `SEND_STALL_TIMEOUT_S` plus `SHUTDOWN_GRACE_S`, whatever filled it, closes the socket with
  1013 (the close frame queued behind what is buffered) and drops it a grace period later.
  This is the backstop: a client that does not take its events is closed first by its session
  (`Outbox`), which counts it.
- It keeps an unfinished message (a fragment, or a frame not yet whole) for as long as the
  client likes. Here a message must be finished within `REQUEST_HEADER_TIMEOUT_S` of its
  first byte, or the socket is closed with 1008.
- After the application has closed the socket it waits for the client's close reply, and
  `transport.close()` waits for the send buffer to drain: a client that reads nothing kept its
  file descriptor and megabytes of kernel memory until it left. Here the TCP connection is
  dropped `SHUTDOWN_GRACE_S` after the application ends (at once when nothing can be sent).
- A text frame that is not UTF-8 is closed with 1007 and logged as one line, not an ERROR
  with a traceback.
- With `WEBSOCKET_SEND=fast` (the default) an event frame is written as it is: the session
  hands over the UTF-8 bytes the emit script stored (`FAST_TEXT`, offered through the scope
  extension `FAST_SEND_EXTENSION`, or synchronously through its `write_now`), and while the
  connection is open, nothing of the protocol's own waits to be sent, writing is not paused
  and no extension was negotiated, the frame header and payload go out in one transport
  write. A socket's first frame in an event-loop step is written at once; the ones after it
  in the same step (a burst of one job, a catch-up page) are held and written together when
  the step ends, one system call for all (`Writes`, `Steps`), and every other write on the
  connection sends them first. Everything else (handshake, pings, the close handshake,
  back-pressure, a negotiated `permessage-deflate`) goes through uvicorn's own code, which
  decodes, re-encodes and serialises each frame through websockets' `Frame` (about four
  copies of the payload).
- The upgrade request is taken over as httptools parsed it (`take_over`, `ws_handshake.py`):
  an ordinary upgrade (what browsers and WebSocket libraries send) is answered here, with
  the 101 and the scope uvicorn and websockets would have made; any other that websockets
  would parse the same becomes its `Request`; the rest goes the old way, written out and
  parsed again by websockets.
- The receive queue is an `Inbox` (no `asyncio.Queue`), and the handshake's request and
  response are let go once the 101 is sent: an idle socket is smaller by about 5 KiB.
- A connection's protocol (and websockets' `ServerProtocol` in it) is a copy of a prototype
  the constructors made once for the server (`ws_prototype.py`), not built anew: their
  logger lookups, queue, HTTP parser and random UUID cost about a tenth of a connection.

It relies on attributes of uvicorn's class (`conn`, `frames`, `writable`, `close_sent`,
`transport`, `handshake_complete`, `initial_response`, `scope`, and for the upgrade
`handshake_initiated`, `default_headers`, `tasks`) and of `websockets`' `ServerProtocol`
(`reader.buffer`, `writes`, `extensions`, `expect_continuation_frame`, `state`, `parser`,
`events`), and for the upgrade on uvicorn's HTTP protocol's parsed request and addresses;
`tests/gateway/test_ws_protocol.py` checks that they exist in the pinned versions
(`constraints.txt`), so an upgrade that moves them fails there, not in production.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected, get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request
from websockets.protocol import OPEN, Protocol

from service.config import Settings
from service.gateway.http_protocol import cancelled, reset
from service.gateway.protocol import CloseCode
from service.gateway.ws_handshake import (
    Upgrade,
    ordinary_upgrade,
    parsed_upgrade,
    switching_protocols,
)
from service.gateway.ws_prototype import Prototype

log = logging.getLogger(__name__)

# In a WebSocket's scope["extensions"] when the server takes an event frame's UTF-8 bytes as
# they are: send `{"type": "websocket.send", FAST_TEXT: <bytes>}` instead of `"text"`.
FAST_SEND_EXTENSION = "resultcast.send_text_bytes"
FAST_TEXT = "resultcast.text_bytes"
# In that extension: the protocol's `write_text_now`, for a session that sends synchronously.
WRITE_NOW = "write_now"
_SHORT, _MEDIUM, _LONG = struct.Struct("!BB"), struct.Struct("!BBH"), struct.Struct("!BBQ")
FIN_TEXT = 0x81


def peer_of(client: Any) -> str | None:
    """`host:port` of a connection's client (uvicorn's `client` tuple), for log lines."""
    return f"{client[0]}:{client[1]}" if client else None


def text_frame(payload: bytes) -> bytes:
    """A server's (unmasked) final text frame carrying `payload` (RFC 6455, 5.2)."""
    return text_frame_header(len(payload)) + payload


def text_frame_header(size: int) -> bytes:
    """The header of a server's final text frame of `size` bytes (not `codec.frame_head`,
    which reads an event's seq and kind)."""
    if size < 126:
        return _SHORT.pack(FIN_TEXT, size)
    if size < 65536:
        return _MEDIUM.pack(FIN_TEXT, 126, size)
    return _LONG.pack(FIN_TEXT, 127, size)


class Writes:
    """The connection's transport, as the protocol and uvicorn see it: frames the fast path
    holds back wait here, and every other write (uvicorn's sends, pongs, the close) sends
    them first, so nothing overtakes them."""

    __slots__ = ("held", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self.held:
            self.flush()
        self.transport.write(data)

    def flush(self) -> None:
        held, self.held = self.held, []
        if held and not self.transport.is_closing():
            self.transport.write(b"".join(held))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.held = []
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class Steps:
    """Marks the event loop's steps for the fast path, per loop: a socket's first frame in a
    step is written at once, the frames after it in the same step (a burst of one job, a
    catch-up page) are held and written together when the step ends, one system call for
    all of them rather than one each."""

    __slots__ = ("_held", "_scheduled", "loop", "step")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._held: list[Writes] = []
        self._scheduled = False
        self.step = 0

    def seen(self) -> None:
        """A frame was written in this step: make sure the step gets an end."""
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._end)

    def hold(self, writes: Writes) -> None:
        self._held.append(writes)

    def _end(self) -> None:
        self._scheduled = False
        self.step += 1
        held, self._held = self._held, []
        for writes in held:
            writes.flush()


class Inbox:
    """What the client sent, waiting for the application's `receive`: uvicorn's queue
    without `asyncio.Queue`'s four deques and its event (2 KiB per socket, nearly always
    empty). One reader (the connection's application), as ASGI has it."""

    __slots__ = ("_items", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[Any] | None = None  # only while something waits
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("two readers of one WebSocket's messages")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = self._items
        item = items.popleft()
        if not items:
            self._items = None
        return item


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with bounded pongs, message deadlines and dropped closes."""

    message_timeout_s = 10.0
    stall_timeout_s = 10.0
    grace_s = 5.0
    fast_send = True

    _steps: Steps | None = None  # per class (a gateway's), made for its loop
    _prototype: Prototype | None = None  # per class, made for one server (`ws_prototype.py`)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        loop = _loop or asyncio.get_event_loop()  # as uvicorn's own
        queue = cast("asyncio.Queue[Any]", Inbox(loop))
        prototype = type(self)._prototype
        if prototype is not None and not prototype.made_for(config, server_state, app_state, loop):
            prototype = None  # made for another server (a test's, a restarted gateway's)
        if prototype is not None and prototype.copyable:
            prototype.fill(self, queue)
        else:
            super().__init__(config, server_state, app_state, loop)
            self.queue = queue
            if prototype is None:
                type(self)._prototype = Prototype.of(self)
        self._unfinished: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._drop: asyncio.TimerHandle | None = None
        self._writes: Writes | None = None
        self._last_step = -1  # the step this socket's last fast frame was written in
        self._write_paused = False  # uvicorn's `writable` cleared (an Event: a call to read)
        self._accept: bytes | None = None  # an ordinary upgrade's, until its 101 is sent

    @classmethod
    def take_over(cls, http: Any) -> bool:
        """Take the connection over from uvicorn's HTTP protocol `http`, which has parsed the
        upgrade request; False (nothing done) for a request left to websockets whole. An
        ordinary upgrade is answered here (`ws_handshake.ordinary_upgrade`), any other that
        websockets would parse the same is handed to it as its `Request`."""
        scope = http.scope
        head = (scope["method"], scope["http_version"], http.url, http.headers)
        upgrade = None
        if not http.config.ws_per_message_deflate:  # then websockets negotiates it
            upgrade = ordinary_upgrade(*head, root_path=http.root_path)
        request = parsed_upgrade(*head) if upgrade is None else None
        if upgrade is None and request is None:
            return False
        protocol = cls(
            config=http.config,
            server_state=http.server_state,
            app_state=http.app_state,
            _loop=http.loop,
        )
        if upgrade is not None:
            protocol._adopt(http)
            protocol._open(upgrade, scope["state"])
        else:
            protocol.connection_made(http.transport)
            http.transport.set_protocol(protocol)
            protocol.handshake(cast(Request, request))
        return True

    def handshake(self, request: Request) -> None:
        """Answer `request` as if websockets had parsed it: its parser goes on to frames."""
        self._read_frames()
        self.conn.events.append(request)
        self.handle_events()

    def _read_frames(self) -> None:
        """websockets' parser goes straight to frames: the request was parsed by httptools."""
        conn = self.conn
        conn.parser = Protocol.parse(conn)
        next(conn.parser)

    def _adopt(self, http: Any) -> None:
        """`connection_made`, with the addresses the HTTP protocol `http` read already (two
        system calls each), and the transport taken from it."""
        transport = http.transport
        self.transport = cast(asyncio.Transport, self._attach(transport))
        self.connections.add(self)
        self.server, self.client = http.server, http.client
        self.scheme = "wss" if http.scheme == "https" else "ws"
        transport.set_protocol(self)

    def _open(self, upgrade: Upgrade, state: dict[str, Any]) -> None:
        """Start the application on an ordinary upgrade, as uvicorn's `handle_connect` does
        after websockets accepted it; the 101 goes out when the application accepts (the
        connection stays CONNECTING until then, as websockets has it). Its parser reads frames
        from here on. `state`: the copy of the app's state uvicorn made for this request."""
        self._read_frames()
        self._accept = upgrade.accept
        self.handshake_initiated = True
        self.request = self.response = None  # type: ignore[assignment]
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": upgrade.path,
            "raw_path": upgrade.raw_path,
            "query_string": upgrade.query_string,
            "headers": upgrade.headers,
            "subprotocols": [],
            "state": state,
            "extensions": {"websocket.http.response": {}},
        }
        self._offer_fast_send()
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    def _attach(self, transport: asyncio.BaseTransport) -> Writes:
        """The transport as the protocol writes to it, and the loop's `Steps`."""
        writes = self._writes = Writes(cast(asyncio.Transport, transport))
        steps = type(self)._steps
        if steps is None or steps.loop is not self.loop:
            type(self)._steps = Steps(self.loop)
        return writes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.BaseTransport, self._attach(transport)))

    # -- what the application sends -----------------------------------------------------------

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        self._offer_fast_send()

    def _offer_fast_send(self) -> None:
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if self.fast_send and scope is not None:
            scope["extensions"][FAST_SEND_EXTENSION] = {WRITE_NOW: self.write_text_now}

    def write_text_now(self, data: bytes) -> bool:
        """Write a text frame of `data` (UTF-8) in this very step, if the connection is open
        and nothing of the protocol's own must go first; False: not written, send it the
        ordinary way. Synchronous: the session's sends cost no coroutine per frame."""
        conn = self.conn
        if (
            not self._write_paused
            and self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and conn.state is OPEN
            and not conn.writes
            and not conn.extensions
            and not conn.expect_continuation_frame
        ):
            writes, steps = self._writes, self._steps
            assert writes is not None and steps is not None
            if self._last_step != steps.step:
                self._last_step = steps.step
                steps.seen()
                writes.write(text_frame(data))
            else:  # a second frame in this step: held, and written with the rest at its end
                if not writes.held:
                    steps.hold(writes)
                writes.held += (text_frame_header(len(data)), data)
            return True
        return False

    async def send(self, message: Any) -> None:
        data = message.get(FAST_TEXT)
        if data is None:
            if self._accept is not None:
                if message["type"] == "websocket.accept":
                    await self._send_101(message)
                    return
                self._accept = None  # refused (403) or answered over HTTP: uvicorn's way
            await super().send(message)
            if message["type"] == "websocket.accept" and self.handshake_complete:
                self._forget_handshake()
        elif not self.write_text_now(data):
            await super().send({"type": "websocket.send", "text": bytes(data).decode()})

    async def _send_101(self, message: Any) -> None:
        """The application accepts an ordinary upgrade: the 101, as uvicorn's `send` has
        websockets write it (its log line included)."""
        if not self.writable.is_set():
            await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        accept, self._accept = self._accept, None
        assert accept is not None
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(
                '%s - "WebSocket %s" [accepted]',
                get_client_addr(self.scope),
                get_path_with_query_string(self.scope),
            )
        headers = self.default_headers + list(message.get("headers", []))
        if not self.transport.is_closing():
            self.handshake_complete = True
            self.conn.state = OPEN  # what websockets' send_response does with a 101
            self.transport.write(switching_protocols(accept, headers, message.get("subprotocol")))
            self.start_keepalive()

    def _forget_handshake(self) -> None:
        """Let go of the upgrade request and the 101 response once it is sent: nothing reads
        them again, and they are 3 KiB on every idle socket. websockets' parser keeps the
        request to the end (a local of its generator), so its headers are emptied too."""
        request = getattr(self, "request", None)
        if request is not None:
            request.headers.clear()
        self.request = self.response = None  # type: ignore[assignment]

    # -- what the client sends ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.disconnected or self.close_sent:
            self._unfinished = cancelled(self._unfinished)
        elif self.frames or (self.handshake_complete and self.conn.reader.buffer):
            if self._unfinished is None:  # the deadline runs from the message's first byte
                self._unfinished = self.loop.call_later(
                    self.message_timeout_s, self._message_expired
                )
        else:
            self._unfinished = cancelled(self._unfinished)

    def handle_ping(self) -> None:
        pong = self.conn.data_to_send()  # websockets queued the pong already
        if self.writable.is_set():
            self.transport.write(b"".join(pong))
        # else: the client reads nothing; answering would grow the send buffer without bound

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                log.info(
                    "closing a WebSocket that sent a text frame that is not UTF-8 (1007)",
                    extra=self._fields(CloseCode.INVALID_TEXT),
                )
                self._fail(CloseCode.INVALID_TEXT, "text frames must be UTF-8")
                return
        super().send_receive_event_to_app()

    def _message_expired(self) -> None:
        self._unfinished = None
        if self.close_sent or self.disconnected:
            return
        log.info(
            "closing a WebSocket whose message stayed unfinished for %gs (1008)",
            self.message_timeout_s,
            extra=self._fields(CloseCode.POLICY),
        )
        self._fail(CloseCode.POLICY, "message not finished in time")

    def _fail(self, code: int, reason: str) -> None:
        """Close the socket from below the application, which is told it was closed; the
        close frame gets the grace period to go out behind what is buffered."""
        self.conn.fail(code, reason)
        self.handle_parser_exception()  # tells the app, sends the close, closes the transport
        self._drop_later(self.grace_s)

    # -- what the client does not read --------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_paused = True
        if self._stall is None:
            self._stall = self.loop.call_later(self.stall_timeout_s + self.grace_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_paused = False
        self._stall = cancelled(self._stall)

    def _stalled(self) -> None:
        self._stall = None
        if self.disconnected:
            return
        log.info(
            "closing a WebSocket whose client accepted nothing for %gs (1013)",
            self.stall_timeout_s + self.grace_s,
            extra=self._fields(CloseCode.TRY_LATER),
        )
        if self.close_sent:
            reset(self.transport)  # even its close frame cannot be sent
        else:
            self._fail(CloseCode.TRY_LATER, "accepted nothing for too long: reconnect and resume")

    def _fields(self, code: CloseCode) -> dict[str, Any]:
        """A log line's fields (LOG_FORMAT=json): the socket's peer and the close code."""
        return {"socket": peer_of(self.client), "code": int(code)}

    # -- the end of the socket ----------------------------------------------------------------

    async def run_asgi(self) -> None:
        await super().run_asgi()
        # The application is done with the socket: whatever the client does, the connection
        # goes within the grace period; at once when its close could not even be handed over
        # (the session gave it the grace period already).
        self._drop_later(0.0 if not self.writable.is_set() else self.grace_s)

    def connection_lost(self, exc: Exception | None) -> None:
        scope = getattr(self, "scope", None)
        if scope is not None:  # no cycle scope -> write_text_now -> protocol left to collect
            scope["extensions"].pop(FAST_SEND_EXTENSION, None)
        self._unfinished = cancelled(self._unfinished)
        self._stall = cancelled(self._stall)
        self._drop = cancelled(self._drop)
        super().connection_lost(exc)

    def _drop_later(self, delay_s: float) -> None:
        """Reset the connection after `delay_s`, unless a reset is due already."""
        if self.disconnected or self._drop is not None:
            return
        self._drop = self.loop.call_later(delay_s, reset, self.transport)


def guarded_ws_protocol(settings: Settings) -> type[GuardedWebSocketProtocol]:
    """The protocol class for uvicorn's `ws=`, with these settings' deadlines."""
    return type(
        "GuardedWebSocketProtocol",
        (GuardedWebSocketProtocol,),
        {
            "message_timeout_s": settings.request_header_timeout_s,
            "stall_timeout_s": settings.send_stall_timeout_s,
            "grace_s": settings.shutdown_grace_s,
            "fast_send": settings.websocket_send == "fast",
        },
    )
