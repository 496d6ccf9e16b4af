"""The ordinary WebSocket upgrade answered without websockets' handshake objects
(`ws_handshake.ordinary_upgrade`): only what websockets would accept with the same 101, every
common client's upgrade among it, and on the wire the same 101 and the same ASGI scope as
uvicorn's own protocols give."""

from __future__ import annotations

import asyncio
import base64
import gc
import socket
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as redis
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from websockets.server import ServerProtocol

from service.config import Settings
from service.gateway.http_protocol import guarded_http_protocol
from service.gateway.ws_handshake import ordinary_upgrade
from service.gateway.ws_protocol import FAST_SEND_EXTENSION, guarded_ws_protocol
from tests.attackers import raw_socket, read_head
from tests.conftest import wait_for
from tests.gateway.test_ws_upgrade import ORDINARY, websockets_own
from tests.processes import running_gateway, serving
from tests.redis_servers import free_port

KEY = dict(ORDINARY)[b"sec-websocket-key"]  # RFC 6455's example: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
BASE = [(b"host", b"127.0.0.1:8000"), (b"sec-websocket-version", b"13")]
CLIENTS = {
    "chromium": [
        *BASE,
        (b"connection", b"Upgrade"),
        (b"pragma", b"no-cache"),
        (b"cache-control", b"no-cache"),
        (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0.0.0 Safari/537.36"),
        (b"upgrade", b"websocket"),
        (b"origin", b"https://app.example"),
        (b"accept-encoding", b"gzip, deflate, br, zstd"),
        (b"accept-language", b"en-US,en;q=0.9"),
        (b"sec-websocket-key", KEY),
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
    ],
    "firefox": [
        *BASE,
        (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"),
        (b"origin", b"https://app.example"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"sec-websocket-key", KEY),
        (b"connection", b"keep-alive, Upgrade"),
        (b"upgrade", b"websocket"),
    ],
    "python websockets": [
        *(header for header in ORDINARY if header[0] != b"origin"),
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
        (b"user-agent", b"Python/3.11 websockets/17.4"),
    ],
}


def websockets_answer(target: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The headers of websockets' 101 to this request, as uvicorn sets websockets up for the
    gateway (no extensions); None where it answers anything but a 101."""
    request = websockets_own("GET", "1.1", target, headers)
    if request is None:
        return None
    response = ServerProtocol(extensions=[]).accept(request)
    return dict(response.headers.raw_items()) if response.status_code == 101 else None


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_the_upgrades_of_common_clients_are_ordinary(client: str) -> None:
    headers = CLIENTS[client]
    upgrade = ordinary_upgrade("GET", "1.1", b"/ws", headers)
    assert upgrade is not None
    assert upgrade.accept == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    answer = websockets_answer(b"/ws", headers)
    assert answer is not None and answer["Sec-WebSocket-Accept"] == upgrade.accept.decode()


def with_header(name: bytes, value: bytes | None) -> list[tuple[bytes, bytes]]:
    """CLIENTS["python websockets"] with `name` set to `value` (removed: None)."""
    headers = [(n, v) for n, v in CLIENTS["python websockets"] if n != name]
    return headers if value is None else [*headers, (name, value)]


LEFT_TO_WEBSOCKETS: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    ("no upgrade", with_header(b"upgrade", None)),
    ("upgrade to h2c", with_header(b"upgrade", b"h2c")),
    ("two protocols", with_header(b"upgrade", b"websocket, h2c")),
    ("two upgrade lines", [*CLIENTS["python websockets"], (b"upgrade", b"websocket")]),
    ("no connection", with_header(b"connection", None)),
    ("connection without upgrade", with_header(b"connection", b"keep-alive")),
    ("connection not a list", with_header(b"connection", b"up grade")),
    ("no key", with_header(b"sec-websocket-key", None)),
    ("a short key", with_header(b"sec-websocket-key", base64.b64encode(b"x" * 15))),
    ("a key not base64", with_header(b"sec-websocket-key", b"!" * 24)),
    ("two keys", [*CLIENTS["python websockets"], (b"sec-websocket-key", KEY)]),
    ("version 8", with_header(b"sec-websocket-version", b"8")),
    ("two versions", [*CLIENTS["python websockets"], (b"sec-websocket-version", b"13")]),
    ("two origins", [*CLIENTS["chromium"], (b"origin", b"https://other.example")]),
    ("a subprotocol", with_header(b"sec-websocket-protocol", b"chat")),
]


@pytest.mark.parametrize(
    "headers", [h for _, h in LEFT_TO_WEBSOCKETS], ids=[n for n, _ in LEFT_TO_WEBSOCKETS]
)
def test_any_other_upgrade_is_left_to_websockets(headers: list[tuple[bytes, bytes]]) -> None:
    assert ordinary_upgrade("GET", "1.1", b"/ws", headers) is None
    for method, version in (("POST", "1.1"), ("GET", "1.0")):
        assert ordinary_upgrade(method, version, b"/ws", CLIENTS["chromium"]) is None


NAMES = st.sampled_from(
    [
        *(b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version", b"origin"),
        *(b"sec-websocket-protocol", b"sec-websocket-extensions", b"x-other", b"content-length"),
    ]
)
VALUES = st.one_of(
    st.sampled_from(
        [
            *(b"websocket", b"WebSocket", b"Upgrade", b"upgrade, keep-alive", b" Upgrade ,x "),
            *(b"13", KEY, b"a,,b", b"", b"0", b"1", b"https://a.example", b"chat", b"h2c/1"),
        ]
    ),
    st.binary(max_size=30).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b"")),
)
TARGETS = st.sampled_from([b"/ws", b"/ws?job=1&x=%20", b"/a%2Fb/ws?", b"/ws#frag", b"/%7Ews"])


@given(st.lists(st.tuples(NAMES, VALUES), max_size=8), TARGETS)
def test_an_ordinary_upgrade_is_one_websockets_accepts_with_the_same_101(
    extra: list[tuple[bytes, bytes]], target: bytes
) -> None:
    headers = [(b"host", b"h"), *extra]
    upgrade = ordinary_upgrade("GET", "1.1", target, headers)
    if upgrade is None:
        return
    answer = websockets_answer(target, headers)
    assert answer is not None, headers  # websockets accepts it too ...
    assert answer["Sec-WebSocket-Accept"] == upgrade.accept.decode()  # ... with this key,
    assert "Sec-WebSocket-Protocol" not in answer and "Sec-WebSocket-Extensions" not in answer
    request = websockets_own("GET", "1.1", target, headers)  # and the headers it parsed
    assert request is not None
    assert upgrade.headers == [
        (k.encode(), v.encode("latin-1")) for k, v in request.headers.raw_items()
    ]


async def _recorder(scopes: list[dict[str, Any]], scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that keeps each WebSocket's scope and accepts it with a header of its own."""
    if scope["type"] != "websocket":
        return
    scopes.append({**scope, "extensions": dict(scope["extensions"])})
    await receive()
    await send({"type": "websocket.accept", "headers": [(b"X-Served-By", b"recorder")]})
    await receive()


def config(
    app: Callable[..., Any], guarded: bool, settings: Settings, host: str = "127.0.0.1"
) -> uvicorn.Config:
    """The gateway's protocols (`guarded`) or uvicorn's own, as the gateway configures them."""
    return uvicorn.Config(
        app,
        host=host,
        port=free_port(),
        log_config=None,
        lifespan="off",
        interface="asgi3",
        http=guarded_http_protocol(settings) if guarded else "httptools",
        ws=guarded_ws_protocol(settings) if guarded else "websockets-sansio",
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        server_header=False,
        root_path="/api",
    )


def answer_to(port: int, target: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The head of the answer to an upgrade, `date` lines dropped (their value is the time)."""
    sock = raw_socket(port)
    try:
        lines = [f"GET {target} HTTP/1.1\r\n".encode()]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        sock.sendall(b"".join(lines) + b"\r\n")
        head = read_head(sock)
    finally:
        sock.close()
    return b"".join(line for line in head.splitlines(True) if not line.lower().startswith(b"date:"))


@pytest.mark.parametrize("target", ["/ws", "/ws?job=a%20b&x=1", "/a%2Fb%7E/ws?"])
async def test_the_101_and_the_scope_are_uvicorns_own(target: str, settings: Settings) -> None:
    answers, seen = [], []
    for guarded in (True, False):
        scopes: list[dict[str, Any]] = []
        app = lambda s, r, w, scopes=scopes: _recorder(scopes, s, r, w)  # noqa: E731
        async with serving(config(app, guarded, settings)) as base:
            port = int(base.rsplit(":", 1)[1])
            headers = [(b"Host", b"gateway.example"), *CLIENTS["chromium"][1:]]
            headers.append((b"X-Padded", b"  value \t"))
            answers.append(await asyncio.to_thread(answer_to, port, target, headers))
        assert len(scopes) == 1
        scope = scopes[0]
        extensions = scope.pop("extensions")
        offered = guarded and settings.websocket_send == "fast"  # the CI reruns with `asgi`
        assert (FAST_SEND_EXTENSION in extensions) is offered
        assert extensions.get("websocket.http.response") == {}
        for moving in ("client", "server"):  # its own port, in each run
            assert scope.pop(moving)[0] == "127.0.0.1"
        seen.append(scope)
    assert answers[0] == answers[1]
    assert answers[0].startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"x-served-by: recorder\r\n" in answers[0]
    assert seen[0] == seen[1]


async def test_a_websocket_refused_before_its_101_gets_uvicorns_403(
    settings: Settings, migrated: redis.Redis
) -> None:
    """An ordinary upgrade to a path with no WebSocket route: the app closes before accepting."""
    async with running_gateway(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        answer = await asyncio.to_thread(answer_to, port, "/nowhere", CLIENTS["chromium"])
    assert answer.startswith(b"HTTP/1.1 403 "), answer


async def test_the_http_protocol_is_freed_at_the_upgrade_without_the_collector(
    settings: Settings,
) -> None:
    """Once the WebSocket protocol has the connection, nothing keeps uvicorn's HTTP protocol
    (its parser and its scope pointed back at it: a cycle only the collector could free)."""
    made: list[weakref.ref[Any]] = []
    base_http = guarded_http_protocol(settings)

    class Recorded(base_http):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    scopes: list[dict[str, Any]] = []
    served = config(lambda s, r, w: _recorder(scopes, s, r, w), True, settings)
    served.http = Recorded
    async with serving(served) as base:
        port = int(base.rsplit(":", 1)[1])
        gc.disable()
        try:
            for headers in (CLIENTS["chromium"], with_header(b"sec-websocket-protocol", b"chat")):
                head = await asyncio.to_thread(answer_to, port, "/ws", headers)
                assert head.startswith(b"HTTP/1.1 101 "), head
                assert made and made[-1]() is None  # freed by its last reference going
        finally:
            gc.enable()
    assert len(made) == 2


async def _addresses(seen: list[tuple[str, Any, Any]], scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that keeps each request's addresses and answers it."""
    if scope["type"] == "lifespan":
        return
    seen.append((scope["type"], scope["client"], scope["server"]))
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()


def _ask(host: str, port: int, request: bytes) -> tuple[tuple[str, int], tuple[str, int]]:
    """Send `request`, read the answer's head; the client's and the server's addresses."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect((host, port))
        sock.sendall(request)
        assert read_head(sock).startswith((b"HTTP/1.1 204 ", b"HTTP/1.1 101 "))
        return sock.getsockname()[:2], sock.getpeername()[:2]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_the_addresses_in_the_scope_are_the_connections(
    host: str, settings: Settings
) -> None:
    """The HTTP protocol takes them from what the transport saved (not from a socket object
    made to ask again): the same (host, port) pairs as uvicorn's own, over IPv4 and IPv6."""
    upgrade = b"".join(
        [b"GET /ws HTTP/1.1\r\n", *(name + b": " + value + b"\r\n" for name, value in ORDINARY)]
    )
    for guarded in (True, False):
        seen: list[tuple[str, Any, Any]] = []
        app = lambda s, r, w, seen=seen: _addresses(seen, s, r, w)  # noqa: E731
        async with serving(config(app, guarded, settings, host=host)) as base:
            port = int(base.rsplit(":", 1)[1])
            plain = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            expected = []
            for kind, request in (("http", plain), ("websocket", upgrade + b"\r\n")):
                client, server = await asyncio.to_thread(_ask, host, port, request)
                expected.append((kind, (client[0], client[1]), (server[0], server[1])))
            await wait_for(lambda seen=seen: len(seen) == 2, what="both requests")
        assert seen == expected, guarded
