"""Cheap hostile clients on raw sockets, and a meter of what they cost a gateway process.

Each attacker is a plain blocking socket with a small receive buffer (so that a client that
reads nothing makes the gateway's sends wait after a few KiB, as a stuck client does), run
in a thread; every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tests.ws_client import connect

OP_CONT, OP_TEXT, OP_CLOSE, OP_PING = 0x0, 0x1, 0x8, 0x9
TCP_ESTABLISHED = 1


def frame(payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455), optionally not the last of its message."""
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def raw_socket(port: int, *, rcvbuf: int = 4096, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout_s)
    sock.connect(("127.0.0.1", port))
    return sock


def read_head(sock: socket.socket) -> bytes:
    """An HTTP response's head (status line and headers)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head


def open_websocket(port: int, *, origin: str | None = None, rcvbuf: int = 4096) -> socket.socket:
    sock = raw_socket(port, rcvbuf=rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = f"Origin: {origin}\r\n" if origin else ""
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n"
        ).encode()
    )
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_close_code(sock: socket.socket, limit_bytes: int = 1 << 26) -> int | None:
    """Read server frames until a close frame (its code) or the end of the connection."""
    buffer, seen = b"", 0
    while seen < limit_bytes:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None
        if not chunk:
            return None
        seen += len(chunk)
        buffer += chunk
        while len(buffer) >= 2:
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, offset = struct.unpack("!H", buffer[2:4])[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < offset + length:
                break
            payload = buffer[offset : offset + length]
            buffer = buffer[offset + length :]
            if opcode == OP_CLOSE:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
    return None


def send_repeatedly(
    sock: socket.socket, message: bytes, most: int, seconds: float = 15.0, batch: int = 256
) -> int:
    """Send `message` as fast as the connection takes it, `most` times at most, for at most
    `seconds`, or until the gateway drops the connection; how many were sent."""
    burst, sent, start = message * batch, 0, time.monotonic()
    try:
        while sent < most and time.monotonic() - start < seconds:
            sock.sendall(burst)
            sent += batch
    except OSError:
        pass  # dropped by the gateway
    return sent


def send_then_wait_until_dropped(
    sockets: list[socket.socket], request: bytes, timeout_s: float
) -> list[float]:
    """Send `request` on every socket, read nothing, and return how long the gateway took to
    close each (failing past `timeout_s`); the sockets are closed at the end."""
    for sock in sockets:
        sock.sendall(request)
    dropped = [wait_until_dropped(sock, timeout_s) for sock in sockets]
    for sock in sockets:
        sock.close()
    return dropped


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of `sock` (1: established; anything else: the peer closed it)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def wait_until_dropped(sock: socket.socket, timeout_s: float) -> float:
    """Seconds until the gateway closed `sock` (FIN or RST), reading nothing; fails on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if tcp_state(sock) != TCP_ESTABLISHED:
            return time.monotonic() - start
        time.sleep(0.02)  # polling the kernel's state with a deadline
    raise AssertionError(f"the gateway kept the connection open for {timeout_s:g}s")


@dataclass
class Meter:
    """A gateway process's RSS and open file descriptors, sampled every 20 ms."""

    pid: int
    rss_start_mib: float = 0.0
    fds_start: int = 0
    rss_peak_mib: float = 0.0
    fds_peak: int = 0
    cpu_start_s: float = 0.0
    samples: list[tuple[float, float, int]] = field(default_factory=list)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def connections(self, port: int) -> int:
        """TCP connections on the gateway's `port` the kernel still holds (not listening, not
        in TIME_WAIT): a connection closed with a FIN behind data the client never read stays
        here for minutes, with its memory, even after the process closed its descriptor."""
        held = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state not in ("0A", "06"):
                held += 1
        return held

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        self.rss_start_mib = self.rss_peak_mib = self.rss_mib()
        self.fds_start = self.fds_peak = self.fds()
        self.cpu_start_s = self.cpu_s()

    async def sample(self) -> None:
        while True:
            rss, fds = self.rss_mib(), self.fds()
            self.rss_peak_mib = max(self.rss_peak_mib, rss)
            self.fds_peak = max(self.fds_peak, fds)
            self.samples.append((time.monotonic(), rss, fds))
            await asyncio.sleep(0.02)  # the sampling period, not a wait for anything

    @property
    def growth_mib(self) -> float:
        return self.rss_peak_mib - self.rss_start_mib

    def report(self, what: str, latencies_ms: list[float]) -> str:
        ordered = sorted(latencies_ms) or [0.0]
        line = (
            f"{what}: gateway RSS +{self.growth_mib:.1f} MiB (peak), fds {self.fds_start} -> "
            f"peak {self.fds_peak} -> {self.fds()}, CPU {self.cpu_s() - self.cpu_start_s:.2f} s; "
            f"normal reader: {len(latencies_ms)} events, p50 "
            f"{ordered[len(ordered) // 2]:.1f} ms, max {ordered[-1]:.1f} ms"
        )
        print("\n" + line)
        return line


async def normal_reader(base: str, job: str, token: str, latencies_ms: list[float]) -> None:
    """A well-behaved client watching a job to its end, recording each event's latency."""
    async with connect(base) as client:
        await client.watch(job, token)
        while True:
            message = orjson.loads(await asyncio.wait_for(client.ws.recv(), 60))
            if message.get("type") != "event":
                continue
            latencies_ms.append(time.time() * 1000 - message["ts"])
            if message["event"] in ("done", "failed"):
                return
