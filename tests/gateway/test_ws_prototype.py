"""A WebSocket's protocol objects copied from a prototype are what the constructors make: the
same attributes with the same values, websockets parsing an upgrade request the same way, and
nothing of one connection's shared with another's. Under versions of uvicorn or websockets
whose constructors make something the copy does not know, the constructors are used."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from service.gateway.ws_protocol import GuardedWebSocketProtocol, guarded_ws_protocol
from service.gateway.ws_prototype import FRESH, FRESH_CONN
from tests.conftest import make_settings

UPGRADE = (
    b"GET /ws?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nOrigin: https://example.com\r\n\r\n"
)


async def _app(scope: object, receive: object, send: object) -> None:
    """An ASGI app that is never called: the protocols are only built here."""


class Server:
    """What uvicorn hands every WebSocket protocol of one server."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.config = uvicorn.Config(_app, ws="websockets-sansio", lifespan="off")
        self.config.load()
        self.state = ServerState()
        self.app_state: dict[str, Any] = {}
        self.loop = loop

    def build(self, cls: type[WebSocketsSansIOProtocol]) -> Any:
        return cls(self.config, self.state, self.app_state, _loop=self.loop)


def guarded() -> type[GuardedWebSocketProtocol]:
    return guarded_ws_protocol(make_settings("redis://127.0.0.1:1"))


async def test_a_copy_is_what_the_constructors_make() -> None:
    server = Server(asyncio.get_running_loop())
    cls = guarded()
    own = server.build(WebSocketsSansIOProtocol)  # uvicorn's and websockets' constructors
    first = server.build(cls)  # by the constructors, and makes the prototype
    assert cls._prototype is not None and cls._prototype.copyable
    copies = [server.build(cls), server.build(cls)]
    for copy in copies:
        assert set(vars(copy)) == set(vars(first))
        for name, value in vars(own).items():
            if name not in FRESH:
                assert vars(copy)[name] == value, name
        assert set(vars(copy.conn)) == set(vars(own.conn))
        for name, value in vars(own.conn).items():
            if name == "available_extensions":  # factories (permessage-deflate's), shared
                assert [vars(f) for f in vars(copy.conn)[name]] == [vars(f) for f in value]
            elif name not in FRESH_CONN:
                assert vars(copy.conn)[name] == value, name
        assert copy.writable.is_set() and copy.frames == []
        assert copy.conn.extensions == [] and copy.conn.events == [] and copy.conn.writes == []
    # Nothing of a connection's own is shared with another's (or with the prototype's).
    for a, b in ((copies[0], copies[1]), (first, copies[0])):
        for name in FRESH:
            assert vars(a)[name] is not vars(b)[name], name
        for name in FRESH_CONN:
            assert vars(a.conn)[name] is not vars(b.conn)[name], name
        assert a.conn.id != b.conn.id
    # websockets reads an upgrade request with a copy as with its own constructor's.
    for conn in (own.conn, copies[1].conn):
        conn.receive_data(UPGRADE)
    [made], [copied] = own.conn.events_received(), copies[1].conn.events_received()
    assert (copied.path, list(copied.headers.raw_items())) == (
        made.path,
        list(made.headers.raw_items()),
    )


async def test_a_prototype_serves_one_server() -> None:
    """Another server (a gateway restarted in the process, a test's) gets its own."""
    cls = guarded()
    one, other = Server(asyncio.get_running_loop()), Server(asyncio.get_running_loop())
    one.build(cls)
    made_for_one = cls._prototype
    copy = other.build(cls)
    assert cls._prototype is not made_for_one
    assert copy.config is other.config and copy.connections is other.state.connections
    assert copy.app_state is other.app_state


async def test_an_attribute_the_copy_does_not_know_means_the_constructors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As if an upgrade of uvicorn gave each protocol a list of its own in its constructor."""
    constructor = WebSocketsSansIOProtocol.__init__

    def with_a_list(self: Any, *args: Any, **kwargs: Any) -> None:
        constructor(self, *args, **kwargs)
        self.pending_pings = []

    monkeypatch.setattr(WebSocketsSansIOProtocol, "__init__", with_a_list)
    server, cls = Server(asyncio.get_running_loop()), guarded()
    with caplog.at_level(logging.WARNING, logger="service.gateway.ws_prototype"):
        built = [server.build(cls) for _ in range(3)]
    assert cls._prototype is not None and not cls._prototype.copyable
    assert built[1].pending_pings is not built[2].pending_pings  # each its own, as made
    warnings = [r for r in caplog.records if r.name == "service.gateway.ws_prototype"]
    assert len(warnings) == 1 and "pending_pings" in warnings[0].getMessage()
