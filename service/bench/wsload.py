"""A lean WebSocket load client: thousands of sockets in one process, frames counted cheaply.

A general client library spends more per frame than the gateway does, which would measure
the client. This one speaks just enough RFC 6455 over asyncio protocols: it sends masked text
frames, reads unmasked server frames, and records for each event its seq and, when the data
carries `t_ns` (the emit time, from the benchmark's handler), the latency to its receipt.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


@dataclass
class Received:
    frames: int = 0
    events: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    emitted_ns: list[int] = field(default_factory=list)  # each timed event's emit time
    # Latency counts only events emitted once every watch was live: earlier ones reach their
    # socket by catch-up when the watch starts, which says how long setup took, not delivery.
    live_from_ns: int = 0
    before_live: int = 0
    first_ns: int = 0
    last_ns: int = 0
    close_codes: list[int] = field(default_factory=list)


class WsProtocol(asyncio.Protocol):
    def __init__(
        self,
        host: str,
        path: str,
        sink: Received,
        keep_seqs: bool,
        on_frame: Callable[[], None] | None = None,
    ) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._buffer = bytearray()
        self._upgraded = False
        self.open = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._sink = sink
        self._keep_seqs = keep_seqs
        self._on_frame = on_frame
        self.transport: asyncio.Transport | None = None
        self.seqs: dict[str, list[int]] = {}  # per job, when keep_seqs

    def itself(self) -> WsProtocol:
        """A protocol factory for `create_connection` that hands over this very protocol."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def send(self, message: dict[str, object]) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(orjson.dumps(message)))

    def _opened(self, status: bytes) -> bool:
        """Consume the response head once it is complete; True once the stream is open with
        `status` (False while the head is incomplete, or when the server refused)."""
        if self._upgraded:
            return True
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        if not buffer.startswith(b"HTTP/1.1 " + status):
            if not self.open.done():  # a refusal whose body arrives in later reads
                self.open.set_exception(
                    ConnectionError(bytes(buffer[:80]).decode(errors="replace"))
                )
            return False
        del buffer[: end + 4]
        self._upgraded = True
        self.open.set_result(None)
        return True

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._opened(b"101"):
            return
        offset = 0
        sink = self._sink
        size = len(buffer)
        while size - offset >= 2:
            opcode = buffer[offset] & 0x0F
            length = buffer[offset + 1] & 0x7F
            start = offset + 2
            if length == 126:
                if size - offset < 4:
                    break
                length = struct.unpack_from("!H", buffer, offset + 2)[0]
                start = offset + 4
            elif length == 127:
                if size - offset < 10:
                    break
                length = struct.unpack_from("!Q", buffer, offset + 2)[0]
                start = offset + 10
            if size < start + length:
                break
            payload = bytes(buffer[start : start + length])
            offset = start + length
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                sink.close_codes.append(code)
                if self.transport is not None:
                    self.transport.close()
                continue
            if opcode == OP_PING:  # a server's keepalive (uvicorn's default): answer it
                if self.transport is not None:
                    self.transport.write(client_frame(payload, OP_PONG))
                continue
            if opcode == OP_PONG:
                continue
            self._handle(payload)
        if offset:
            del buffer[:offset]

    def _handle(self, payload: bytes) -> None:
        sink = self._sink
        now = time.perf_counter_ns()
        sink.frames += 1
        if payload.startswith(b'{"seq":'):
            sink.events += 1
            if not sink.first_ns:
                sink.first_ns = now
            sink.last_ns = now
            if self._keep_seqs or b'"t_ns":' in payload:
                event = orjson.loads(payload)
                if self._keep_seqs:
                    self.seqs.setdefault(event["job"], []).append(event["seq"])
                data = event.get("data")
                if isinstance(data, dict) and "t_ns" in data:
                    if data["t_ns"] >= sink.live_from_ns:
                        sink.latencies_ns.append(time.time_ns() - data["t_ns"])
                        sink.emitted_ns.append(data["t_ns"])
                    else:
                        sink.before_live += 1
        if self._on_frame is not None:
            self._on_frame()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)


async def open_sockets(
    url: str,
    count: int,
    sink: Received,
    keep_seqs: bool = False,
    on_frame: Callable[[], None] | None = None,
    *,
    receive_buffer_bytes: int | None = None,
) -> list[WsProtocol]:
    """`count` upgraded sockets; `receive_buffer_bytes` shrinks each one's kernel receive
    buffer, so that a socket that stops reading pushes back on the gateway at once."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    sockets: list[WsProtocol] = []
    for start in range(0, count, 200):  # in batches, so the accept queue never overflows
        batch = []
        for _ in range(min(200, count - start)):
            protocol = WsProtocol(f"{host}:{port}", "/ws", sink, keep_seqs, on_frame)
            if receive_buffer_bytes is None:
                await loop.create_connection(protocol.itself, host, port)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
                sock.setblocking(False)
                await loop.sock_connect(sock, (host, port))
                await loop.create_connection(protocol.itself, sock=sock)
            batch.append(protocol)
        await asyncio.gather(*(p.open for p in batch))
        sockets += batch
    return sockets
