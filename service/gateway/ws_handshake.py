"""The WebSocket upgrade request as httptools parsed it: handed to websockets as its `Request`,
or, for the upgrade nearly every client sends, answered here (RFC 6455, 4.2).

uvicorn writes the upgrade request out again for websockets to parse a second time, then
websockets checks it, builds a 101 with a `Date` that uvicorn deletes, and uvicorn builds the
scope from websockets' headers: about a third of what a connection costs the gateway. Here:

- `ordinary_upgrade`: an upgrade that websockets, as uvicorn sets it up for the gateway (no
  extension, no subprotocol, any `Origin`), would accept with a 101, and nothing else, gives
  its `Sec-WebSocket-Accept` and its headers; the protocol answers it (`switching_protocols`)
  with the very bytes uvicorn and websockets write, but for websockets' deleted `Date`.
- `parsed_upgrade`: any other request websockets would parse the same from its bytes becomes
  websockets' `Request`, which websockets answers as it always has (a 400, a subprotocol).
- Anything else goes the way it always did: written out and parsed by websockets.

The rules are websockets' own, checked against it in tests/gateway/test_ws_handshake.py:
whatever is answered here websockets would have answered with the same 101.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import NamedTuple
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request

_TOKEN = re.compile(rb"[-!#$%&\'*+.^_`|~0-9a-zA-Z]+")  # RFC 9110 field names (websockets')
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")  # field values, as websockets checks them
KEY_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, 1.3
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"

RawHeaders = list[tuple[bytes, bytes]]


class Upgrade(NamedTuple):
    """An ordinary upgrade: the `Sec-WebSocket-Accept` value its 101 carries, and the ASGI
    scope's parts that websockets' parse would have given uvicorn."""

    accept: bytes
    headers: RawHeaders  # names lowercased (httptools'), values stripped (websockets')
    path: str
    raw_path: bytes
    query_string: bytes


def accept_key(key: bytes) -> bytes:
    """`Sec-WebSocket-Accept` for a request's `Sec-WebSocket-Key`."""
    return base64.b64encode(hashlib.sha1(key + KEY_GUID).digest())


def _plain_head(method: str, http_version: str, target: bytes, headers: RawHeaders) -> bool:
    """Whether websockets would parse this request line and header count as httptools did.
    Line lengths as uvicorn writes the request out: "GET <target> HTTP/1.1\\r\\n" and
    "<name>: <value>\\r\\n", at most MAX_LINE_LENGTH bytes each with the CRLF."""
    return (
        method == "GET"
        and http_version == "1.1"
        and len(headers) <= MAX_NUM_HEADERS
        and target.isascii()
        and len(target) + 15 <= MAX_LINE_LENGTH
    )


def _plain_value(name: bytes, raw_value: bytes) -> bytes | None:
    """The value of a header line that websockets would parse the same (stripped as it strips
    values), or None: too long, not a token name, a byte it refuses, or a body announced."""
    value = raw_value.strip(b" \t")
    if (
        len(name) + len(raw_value) + 4 > MAX_LINE_LENGTH
        or name == b"transfer-encoding"
        or (name == b"content-length" and value != b"0")
        or not _TOKEN.fullmatch(name)
        or not _VALUE.fullmatch(value)
    ):
        return None
    return value


def parsed_upgrade(
    method: str, http_version: str, target: bytes, headers: RawHeaders
) -> Request | None:
    """The upgrade request httptools parsed, as websockets' `Request`, when websockets would
    have parsed the same from its bytes without complaint; None for anything else (a method
    but GET, HTTP/1.0, too many or too long header lines, a body), which then goes the way it
    always did, so that websockets answers it as it always has."""
    if not _plain_head(method, http_version, target, headers):
        return None
    parsed = Headers()
    for name, raw_value in headers:
        value = _plain_value(name, raw_value)
        if value is None:
            return None
        parsed.set_insecure(name.decode("ascii"), value.decode("iso-8859-1"))
    return Request(target.decode("ascii"), parsed)


def ordinary_upgrade(
    method: str, http_version: str, target: bytes, headers: RawHeaders, root_path: str = ""
) -> Upgrade | None:
    """The upgrade, when websockets would accept it with a 101 as uvicorn sets it up for the
    gateway (no extensions offered to the client, no subprotocols, any `Origin`); None for
    any other request, which websockets then answers (`ServerProtocol.process_request`):
    exactly one `Upgrade: websocket`, a `Connection` list of tokens naming `upgrade`, one
    `Sec-WebSocket-Key` of 16 bytes in base64, one `Sec-WebSocket-Version: 13`, at most one
    `Origin`, no `Sec-WebSocket-Protocol` (extensions a client offers are ignored)."""
    if not _plain_head(method, http_version, target, headers):
        return None
    key = version = None
    upgrade = connection = False
    origins = 0
    plain: RawHeaders = []
    for name, raw_value in headers:
        value = _plain_value(name, raw_value)
        if value is None:
            return None
        plain.append((name, value))
        if name == b"upgrade":
            if upgrade or value.lower() != b"websocket":
                return None
            upgrade = True
        elif name == b"connection":
            options = [option.strip(b" \t").lower() for option in value.split(b",")]
            if not all(_TOKEN.fullmatch(option) for option in options):
                return None
            connection = connection or b"upgrade" in options
        elif name == b"sec-websocket-key":
            if key is not None:
                return None
            key = value
        elif name == b"sec-websocket-version":
            if version is not None:
                return None
            version = value
        elif name == b"origin":
            origins += 1
        elif name == b"sec-websocket-protocol":
            return None
    if not (upgrade and connection and version == b"13" and key is not None and origins <= 1):
        return None
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    # The path as uvicorn takes it from websockets' `Request.path` (the target, query and all).
    raw_path, _, query_string = target.partition(b"?")
    path = root_path + unquote(raw_path.decode("ascii"))
    return Upgrade(accept_key(key), plain, path, root_path.encode("ascii") + raw_path, query_string)


def switching_protocols(
    accept: bytes, headers: RawHeaders, subprotocol: str | None = None
) -> bytes:
    """The 101 for an ordinary upgrade, as uvicorn has websockets write it: websockets'
    three headers, then `headers` (uvicorn's defaults and the application's) with their names
    lowercased, then the subprotocol the application chose. Without websockets' `Date`, which
    uvicorn deletes (its own `date` is among its defaults)."""
    lines = [SWITCHING, b"Sec-WebSocket-Accept: ", accept, b"\r\n"]
    for name, value in headers:
        lines += (name.decode("latin-1").lower().encode("latin-1"), b": ", value, b"\r\n")
    if subprotocol:
        lines += (b"Sec-WebSocket-Protocol: ", subprotocol.encode("latin-1"), b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
