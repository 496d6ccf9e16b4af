"""The WebSocket upgrade taken over as httptools parsed it: the same `Request` websockets
builds from the bytes, every request websockets would refuse left to websockets, and the
answers on the wire unchanged."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import pytest
import redis.asyncio as redis
from hypothesis import given
from hypothesis import strategies as st
from websockets.http11 import MAX_NUM_HEADERS, Request
from websockets.streams import StreamReader

from service.config import Settings
from service.gateway.ws_handshake import parsed_upgrade
from tests.attackers import raw_socket, read_head
from tests.processes import running_gateway

KEY_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ORDINARY = [
    (b"host", b"127.0.0.1:8000"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
    (b"origin", b"https://app.example"),
]


def websockets_own(
    method: str, version: str, target: bytes, headers: list[tuple[bytes, bytes]]
) -> Request | None:
    """What websockets parses from the request written out as uvicorn writes it; None where
    it refuses the request."""
    head = [method.encode(), b" ", target, f" HTTP/{version}\r\n".encode()]
    for name, value in headers:
        head += [name, b": ", value, b"\r\n"]
    reader = StreamReader()
    reader.feed_data(b"".join(head) + b"\r\n")
    parser = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        request: Request = done.value
        return request
    except Exception:
        return None
    raise AssertionError("websockets wanted more of a whole request")


def same(a: Request | None, b: Request | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.method, a.path, list(a.headers.raw_items())) == (
        b.method,
        b.path,
        list(b.headers.raw_items()),
    )


def test_an_ordinary_upgrade_becomes_the_request_websockets_parses() -> None:
    target = b"/ws?x=1"
    ours = parsed_upgrade("GET", "1.1", target, ORDINARY)
    assert ours is not None and same(ours, websockets_own("GET", "1.1", target, ORDINARY))


def test_what_websockets_would_refuse_is_left_to_it() -> None:
    """Each of these goes the old way (None), where websockets answers it as it always did."""
    many = [(f"x-{i}".encode(), b"1") for i in range(MAX_NUM_HEADERS + 1)]
    cases = [
        ("POST", "1.1", b"/ws", ORDINARY),
        ("GET", "1.0", b"/ws", ORDINARY),
        ("GET", "1.1", b"/ws", many),
        ("GET", "1.1", b"/ws", [*ORDINARY, (b"x-long", b"v" * 9000)]),
        ("GET", "1.1", b"/" + b"p" * 9000, ORDINARY),
        ("GET", "1.1", b"/ws", [*ORDINARY, (b"transfer-encoding", b"chunked")]),
        ("GET", "1.1", b"/ws", [*ORDINARY, (b"content-length", b"5")]),
        ("GET", "1.1", b"/ws", [*ORDINARY, (b"x-bad", b"a\x00b")]),
        ("GET", "1.1", b"/ws", [*ORDINARY, (b"bad name", b"v")]),
        ("GET", "1.1", "/é".encode(), ORDINARY),
    ]
    for method, version, target, headers in cases:
        assert parsed_upgrade(method, version, target, headers) is None, (method, target)
    # a zero Content-Length is allowed by both
    zero = [*ORDINARY, (b"content-length", b"0")]
    assert same(
        parsed_upgrade("GET", "1.1", b"/ws", zero), websockets_own("GET", "1.1", b"/ws", zero)
    )


@pytest.mark.parametrize("size", [8175, 8176, 8177, 8178, 8179])
def test_lines_at_websockets_length_limit_are_decided_as_it_decides(size: int) -> None:
    target = b"/" + b"p" * (size - 1)
    assert same(
        parsed_upgrade("GET", "1.1", target, ORDINARY),
        websockets_own("GET", "1.1", target, ORDINARY),
    )
    headers = [*ORDINARY, (b"x-long", b"v" * (size + 5))]  # a line of size + 15 bytes too
    ours, theirs = (
        parsed_upgrade("GET", "1.1", b"/ws", headers),
        websockets_own("GET", "1.1", b"/ws", headers),
    )
    assert same(ours, theirs)


def test_whitespace_around_values_is_dropped_as_websockets_drops_it() -> None:
    headers = [*ORDINARY, (b"x-padded", b" \tv \t")]
    ours = parsed_upgrade("GET", "1.1", b"/ws", headers)
    assert ours is not None and ours.headers["x-padded"] == "v"
    assert same(ours, websockets_own("GET", "1.1", b"/ws", headers))


NAMES = st.sampled_from(
    [b"x-a", b"x-b", b"content-length", b"transfer-encoding", b"bad name", b"x~!"]
)
VALUES = st.binary(max_size=40).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))


@given(st.lists(st.tuples(NAMES, VALUES), max_size=6))
def test_any_headers_give_websockets_own_request_or_are_left_to_it(
    extra: list[tuple[bytes, bytes]],
) -> None:
    headers = [*ORDINARY, *((name, value.strip(b" \t")) for name, value in extra)]
    ours = parsed_upgrade("GET", "1.1", b"/ws", headers)
    if ours is not None:  # never a request websockets would not have made the same
        assert same(ours, websockets_own("GET", "1.1", b"/ws", headers))


def upgrade(port: int, extra: str = "", version: str = "13") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    sock = raw_socket(port)
    try:
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: {version}\r\n{extra}\r\n"
            ).encode()
        )
        head = read_head(sock)
    finally:
        sock.close()
    if head.startswith(b"HTTP/1.1 101"):
        accept = base64.b64encode(hashlib.sha1(key.encode() + KEY_GUID).digest())
        assert b"Sec-WebSocket-Accept: " + accept + b"\r\n" in head, head
    return head


async def test_upgrades_are_answered_as_before_on_either_way(
    settings: Settings, migrated: redis.Redis
) -> None:
    async with running_gateway(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        ordinary = await asyncio.to_thread(upgrade, port)
        assert ordinary.startswith(b"HTTP/1.1 101"), ordinary
        many = "".join(f"X-{i}: 1\r\n" for i in range(MAX_NUM_HEADERS + 1))
        refused = await asyncio.to_thread(upgrade, port, many)  # websockets' own answer
        assert refused.startswith(b"HTTP/1.1 431"), refused
        # parsed here, refused by websockets' own handshake checks, as before
        wrong = await asyncio.to_thread(upgrade, port, "", "8")
        assert wrong.startswith(b"HTTP/1.1 400"), wrong
