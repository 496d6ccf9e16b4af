"""The guarded protocols under uvicorn: what they rely on exists in the pinned versions, and a
text frame that is not UTF-8 is one log line, not an ERROR with a traceback."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from typing import Any

import pytest
import redis.asyncio as redis
import uvicorn
import websockets
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

from service.config import Settings
from service.gateway.ws_protocol import (
    FAST_SEND_EXTENSION,
    FAST_TEXT,
    guarded_ws_protocol,
    text_frame,
)
from tests.attackers import frame, open_websocket, read_close_code
from tests.conftest import make_settings
from tests.processes import running_gateway, serving
from tests.redis_servers import free_port


async def _app(scope: object, receive: object, send: object) -> None:
    """An ASGI app that is never called: the protocols are only built here."""


def test_what_the_guarded_protocols_rely_on_exists() -> None:
    """uvicorn's and websockets' names that `ws_protocol.py` and `http_protocol.py` use: an
    upgrade that renames one fails here, with its name, rather than in production."""
    config = uvicorn.Config(_app, ws="websockets-sansio", lifespan="off")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        ws = WebSocketsSansIOProtocol(config, ServerState(), {}, _loop=loop)
        http = HttpToolsProtocol(config, ServerState(), {}, _loop=loop)
    finally:
        loop.close()
    for name in ("conn", "frames", "writable", "close_sent", "disconnected"):
        assert hasattr(ws, name), f"WebSocketsSansIOProtocol.{name}"
    for name in ("handshake_complete", "curr_msg_data_type", "loop", "logger"):
        assert hasattr(ws, name), f"WebSocketsSansIOProtocol.{name}"
    # The fast send path (WEBSOCKET_SEND=fast).
    assert hasattr(ws, "initial_response"), "WebSocketsSansIOProtocol.initial_response"
    assert "scope" in WebSocketsSansIOProtocol.handle_connect.__code__.co_names
    assert callable(getattr(ws, "send", None)) and callable(getattr(ws, "handle_connect", None))
    server = ServerProtocol()
    for name in ("writes", "extensions", "expect_continuation_frame", "state"):
        assert hasattr(server, name), f"websockets ServerProtocol.{name}"
    for method in (
        "data_received",
        "handle_ping",
        "send_receive_event_to_app",
        "handle_parser_exception",
        "run_asgi",
        "pause_writing",
        "resume_writing",
        "connection_lost",
    ):
        assert callable(getattr(ws, method, None)), f"WebSocketsSansIOProtocol.{method}"
    assert isinstance(ServerProtocol().reader.buffer, bytearray)
    for name in ("cycle", "parser", "logger", "loop"):
        assert hasattr(http, name), f"HttpToolsProtocol.{name}"
    for name in ("url", "headers"):  # each request's, set as it begins
        assert name in HttpToolsProtocol.on_message_begin.__code__.co_names, name
    for method in (
        "on_message_begin",
        "on_headers_complete",
        "on_message_complete",
        "handle_websocket_upgrade",
        "send_400_response",
    ):
        assert callable(getattr(http, method, None)), f"HttpToolsProtocol.{method}"
    assert isinstance(ServerState().connections, set)
    # Taking the upgrade over as parsed (GuardedWebSocketProtocol.take_over and handshake).
    for name in ("config", "server_state", "app_state", "transport", "url", "headers"):
        assert name in vars(http) or name in HttpToolsProtocol.on_message_begin.__code__.co_names
    assert "_loop" in inspect.signature(WebSocketsSansIOProtocol.__init__).parameters
    assert "connections" in vars(http) and "ws_protocol_class" in vars(http)
    server = ServerProtocol()
    assert inspect.isgenerator(server.parser) and isinstance(server.events, list)
    assert inspect.isgeneratorfunction(Protocol.parse)
    assert callable(Headers.set_insecure) and callable(getattr(ws, "handle_events", None))
    # An ordinary upgrade answered by the protocol (`_adopt`, `_open`, `_send_101`).
    for name in ("root_path", "server", "client", "scheme"):
        assert name in vars(http), f"HttpToolsProtocol.{name}"
    assert '"state"' in inspect.getsource(HttpToolsProtocol.on_message_begin)
    for name in ("handshake_initiated", "default_headers", "tasks", "asgi_version", "root_path"):
        assert name in vars(ws), f"WebSocketsSansIOProtocol.{name}"
    for method in ("on_task_complete", "start_keepalive"):
        assert callable(getattr(ws, method, None)), f"WebSocketsSansIOProtocol.{method}"


def test_uvicorns_connection_made_sets_what_the_guarded_one_does() -> None:
    """`GuardedHttpProtocol.connection_made` is uvicorn's with the addresses read another
    way: an upgrade of uvicorn whose own sets anything more fails here."""
    source = inspect.getsource(HttpToolsProtocol.connection_made)
    assigned = set(re.findall(r"self\.(\w+) =", source))
    assert assigned == {"transport", "flow", "server", "client", "scheme"}, assigned
    assert "self.connections.add(self)" in source


def test_uvicorn_reads_its_queue_and_handshake_only_as_the_protocol_assumes() -> None:
    """`Inbox` stands in for uvicorn's `asyncio.Queue` with three methods, and the handshake's
    request and response are dropped once the 101 is sent: an upgrade that uses the queue
    otherwise, or reads the handshake later, fails here."""
    source = inspect.getsource(WebSocketsSansIOProtocol)
    assert set(re.findall(r"self\.queue\.(\w+)", source)) <= {"put_nowait", "get", "empty"}
    readers = {
        name
        for name, method in vars(WebSocketsSansIOProtocol).items()
        if callable(method) and re.search(r"self\.(request|response)\b", inspect.getsource(method))
    }
    assert readers == {"handle_connect", "send"}, readers


@pytest.mark.logs_errors  # the guard must not hide an ERROR: the assertion below checks
async def test_text_that_is_not_utf8_closes_with_1007_and_one_quiet_line(
    settings: Settings, migrated: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_gateway(settings) as base:
        port = int(base.rsplit(":", 1)[1])

        def send_invalid() -> int | None:
            sock = open_websocket(port)
            sock.sendall(frame(b'{"op": "ping", "x": "\xff\xfe"}'))
            code = read_close_code(sock)
            sock.close()
            return code

        codes = [await asyncio.to_thread(send_invalid) for _ in range(5)]
    assert codes == [1007] * 5
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == [], [r.getMessage() for r in loud]
    said = [r for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert len(said) == 5 and all(r.levelno == logging.INFO for r in said)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_the_fast_path_frames_are_websockets_own(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


@given(st.binary(max_size=200_000))
def test_the_fast_path_frames_are_websockets_own_for_any_payload(payload: bytes) -> None:
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


@pytest.mark.parametrize("websocket_send", ["fast", "asgi"])
@pytest.mark.parametrize("deflate", [False, True])
async def test_a_frame_handed_over_as_bytes_arrives_on_either_path(
    settings: Settings, websocket_send: str, deflate: bool
) -> None:
    """`fast` offers the scope extension and writes the bytes itself (uvicorn's own code when
    the client negotiated permessage-deflate); `asgi` does not offer it."""
    offered: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        offered.append(FAST_SEND_EXTENSION in scope["extensions"])
        message = {"type": "websocket.send", FAST_TEXT: "é vent".encode()}
        await send(message if offered[-1] else {"type": "websocket.send", "text": "é vent"})
        await receive()

    chosen = make_settings(settings.redis_url, websocket_send=websocket_send)
    protocol = guarded_ws_protocol(chosen)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off", ws=protocol)
    async with serving(config) as base:
        url = base.replace("http", "ws") + "/"
        compression = "deflate" if deflate else None
        async with websockets.connect(url, compression=compression) as ws:
            assert await ws.recv() == "é vent"
    assert offered == [websocket_send == "fast"]
