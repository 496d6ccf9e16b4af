"""uvicorn's HTTP protocol, with what one cheap connection may cost the gateway bounded.

uvicorn times out a keep-alive connection between requests and nothing else. Left at that, a
client can hold a connection, its buffers and a file descriptor for as long as it likes: by
never finishing its request's headers (slowloris), by sending a header of any size (httptools
grows it with `bytes +=`: quadratic CPU), by trickling a body, or by never reading a response.
Each connection here, whatever it carries (a request, an event stream, a response):

- completes its request's headers within `REQUEST_HEADER_TIMEOUT_S` of opening (or of its
  previous response), else it is closed;
- sends at most `MAX_HEAD_BYTES` of request line and headers: past that it gets 431 (414 when
  the URL alone is that long) as soon as that many bytes have arrived;
- delivers its body within `REQUEST_BODY_TIMEOUT_S` of its headers, else it is closed;
- accepts what it is sent: a client that leaves the send buffer full for
  `SEND_STALL_TIMEOUT_S` is closed, and its TCP connection dropped `SHUTDOWN_GRACE_S` later
  if even that close cannot be flushed.

uvicorn's own plain-text 400 for a malformed request is the contract's JSON error here too.
A WebSocket, once upgraded, has its own guards (`ws_protocol.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any

import orjson
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import is_ssl

from service.config import Settings

log = logging.getLogger(__name__)

# The request line and headers of one request, at most (431 past it).
MAX_HEAD_BYTES = 64 * 1024
# In each request's ASGI scope["extensions"]: a callable that resets the connection now, for
# a response the application gives up on (an event stream whose end cannot be sent).
RESET_EXTENSION = "resultcast.reset"
REASONS = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


def error_response(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 response with the contract's error body, closing the connection."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, REASONS[status], len(body))
    )
    return head + body


def cancelled(timer: asyncio.TimerHandle | None) -> asyncio.TimerHandle | None:
    """Cancel `timer` if there is one; returns None, the value of the attribute that held it
    (`self._stall = cancelled(self._stall)`)."""
    if timer is not None:
        timer.cancel()
    return None


def reset(transport: asyncio.Transport) -> None:
    """Drop a connection at once, with a TCP reset.

    `abort()` alone closes the file descriptor, but the kernel still holds what the client did
    not read, with the FIN queued behind it, for as long as the client keeps its window shut
    (minutes of zero-window probes): the memory a stuck client costs is in the kernel. A zero
    linger time makes the close a reset that frees it.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def address(info: Any) -> tuple[str, int] | None:
    """A socket address as uvicorn puts it in the scope: host and port (IPv6's flow and scope
    ids left out), None when there is none."""
    if isinstance(info, tuple | list) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


_QUIET = logging.getLogger(__name__ + ".refused")
_QUIET.disabled = True


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request that was refused."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines and limits on what a client may hold."""

    header_timeout_s = 10.0
    body_timeout_s = 30.0
    stall_timeout_s = 10.0
    grace_s = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None  # headers, or the body
        self._stall: asyncio.TimerHandle | None = None  # while the send buffer is full
        self._drop: asyncio.TimerHandle | None = None  # after a close nobody reads
        self._head_bytes = 0
        self._in_body = False

    # -- the request's head ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """uvicorn's, with the addresses the transport saved as it was made: uvicorn asks a
        socket object made for the purpose (three system calls more per connection)."""
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = address(transport.get_extra_info("sockname"))
        self.client = address(transport.get_extra_info("peername"))
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        self._arm(self.header_timeout_s, "sent no complete request headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the first request's runs from the connection's opening
            self._arm(self.header_timeout_s, "sent no complete request headers")

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head still arriving: refused once that much has come, not after megabytes.
        if not self._in_body and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._deadline = cancelled(self._deadline)
        self._head_bytes, self._in_body = 0, True
        # A head that arrived whole in one read: measured as it was parsed.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEAD_BYTES:
            self._refuse_head()
            # Raising stops the parser; uvicorn then logs "Invalid HTTP request received",
            # which this connection has said better already: its logger is quiet from here.
            self.logger = _QUIET
            raise HeadTooLarge
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[RESET_EXTENSION] = self._reset_now
        super().on_headers_complete()
        if self._has_body():
            self._arm(self.body_timeout_s, "sent no complete request body")

    def on_message_complete(self) -> None:
        self._deadline = cancelled(self._deadline)
        self._in_body = False
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The connection is the WebSocket protocol's from now on, with its own guards.
        self._deadline = cancelled(self._deadline)
        self._stall = cancelled(self._stall)
        # Ours takes the request as parsed here (`GuardedWebSocketProtocol.take_over`).
        take_over = getattr(self.ws_protocol_class, "take_over", None)
        if take_over is not None and take_over(self):
            self.connections.discard(self)
        else:
            super().handle_websocket_upgrade()
        # Nothing here is used again. The parser and the scope's reset callable point back
        # at this protocol: let go of them, or the three wait for the garbage collector.
        self.parser = self.scope = None  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(error_response(400, "bad_request", "malformed HTTP request"))
        self._close("sent a malformed request")

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return True
        return False

    def _refuse_head(self) -> None:
        if self.transport.is_closing():
            return
        self._deadline = cancelled(self._deadline)
        # The URL itself is what is too long (or all there is so far).
        if len(getattr(self, "url", b"")) > MAX_HEAD_BYTES // 2:
            response = error_response(414, "too_large", "the URL is over 64 KiB")
        else:
            response = error_response(431, "too_large", "the request headers are over 64 KiB")
        self.transport.write(response)
        self._close("sent request headers over 64 KiB")

    # -- the response ---------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(self.stall_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stall = cancelled(self._stall)

    def _stalled(self) -> None:
        self._stall = None
        self._close(f"accepted nothing for {self.stall_timeout_s:g}s")

    # -- closing ----------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = cancelled(self._deadline)
        self._stall = cancelled(self._stall)
        self._drop = cancelled(self._drop)
        super().connection_lost(exc)

    def _arm(self, timeout_s: float, what: str) -> None:
        cancelled(self._deadline)
        self._deadline = self.loop.call_later(timeout_s, self._expired, timeout_s, what)

    def _expired(self, timeout_s: float, what: str) -> None:
        self._deadline = None
        self._close(f"{what} within {timeout_s:g}s")

    def _reset_now(self) -> None:
        """The application gives up on its response: the connection goes now, and uvicorn
        takes the client for gone (it does not report a response left unfinished)."""
        if self.cycle is not None:
            self.cycle.disconnected = True
        reset(self.transport)

    def _close(self, why: str) -> None:
        """Close (flushing what waits), and drop the connection if that cannot finish."""
        if self._drop is not None:
            return
        log.info("closing an HTTP connection that %s", why)
        if self.cycle is not None:
            self.cycle.keep_alive = False
        self.transport.close()
        self._drop = self.loop.call_later(self.grace_s, reset, self.transport)


def guarded_http_protocol(settings: Settings) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn's `http=`, with these settings' deadlines."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "header_timeout_s": settings.request_header_timeout_s,
            "body_timeout_s": settings.request_body_timeout_s,
            "stall_timeout_s": settings.send_stall_timeout_s,
            "grace_s": settings.shutdown_grace_s,
        },
    )
