"""One cheap client without a token, below the application: what it can cost a gateway.

Each test runs a real gateway as a child process (its RSS and file descriptors are read from
/proc while the attack runs), a worker, and a normal WebSocket reader watching a job during
the attack; each prints what was measured (docs/security.md has the figures). The timeouts
are shortened so that each test takes seconds: stalls 2 s, grace 1 s, headers, bodies and
unfinished messages 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis.asyncio as redis

from tests.attackers import (
    OP_PING,
    OP_TEXT,
    TCP_ESTABLISHED,
    Meter,
    frame,
    normal_reader,
    open_websocket,
    raw_socket,
    read_close_code,
    read_head,
    send_repeatedly,
    send_then_wait_until_dropped,
    tcp_state,
    wait_until_dropped,
)
from tests.conftest import make_settings, wait_for
from tests.processes import gateway_process, migrated_redis, ready, running_worker
from tests.redis_servers import free_port
from tests.ws_client import submit

pytestmark = pytest.mark.slow

STALL_S, GRACE_S, DEADLINE_S = 2.0, 1.0, 2.0
SHORT = {
    "SEND_STALL_TIMEOUT_S": str(STALL_S),
    "SHUTDOWN_GRACE_S": str(GRACE_S),
    "REQUEST_HEADER_TIMEOUT_S": str(DEADLINE_S),
    "REQUEST_BODY_TIMEOUT_S": str(DEADLINE_S),
}
MiB = 1024 * 1024
T = TypeVar("T")


@dataclass
class Stack:
    base: str
    port: int
    meter: Meter
    client: redis.Redis

    async def attack(self, attacker: Callable[..., T], *args: object) -> tuple[T, list[float]]:
        """Run `attacker(port, *args)` (blocking, in a thread) while a normal reader watches a
        3 s job; its result, and the reader's latencies (ms)."""
        running = asyncio.ensure_future(asyncio.to_thread(attacker, self.port, *args))
        job, token = await submit(self.base, "count", {"n": 60, "interval_ms": 50})
        latencies: list[float] = []
        await normal_reader(self.base, job, token, latencies)
        return await running, latencies


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, **env: str) -> AsyncIterator[Stack]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with migrated_redis(tmp_path / "redis") as (server, client):
        with gateway_process(server.url, port, **(SHORT | env)) as gateway:
            async with running_worker(make_settings(server.url)):
                await wait_for(lambda: ready(base), timeout_s=30, what="the gateway")
                meter = Meter(gateway.pid)
                meter.start()
                sampler = asyncio.create_task(meter.sample())
                try:
                    yield Stack(base, port, meter, client)
                finally:
                    sampler.cancel()


async def test_a_ping_flood_from_a_client_that_reads_nothing_is_bounded_and_dropped(
    tmp_path: Path,
) -> None:
    """Before: every ping answered whatever the client read, +25 MiB/s, held until it left."""

    def flood(port: int) -> tuple[int, float]:
        sock = open_websocket(port)
        sent = send_repeatedly(sock, frame(b"x" * 125, OP_PING), 400_000)
        dropped_after = wait_until_dropped(sock, STALL_S + 3 * GRACE_S + 5)
        sock.close()
        return sent, dropped_after

    async with stack(tmp_path) as s:
        (sent, _), latencies = await s.attack(flood)
        s.meter.report(f"ping flood ({sent} pings)", latencies)
        assert s.meter.growth_mib < 16, s.meter.growth_mib
        await wait_for(lambda: s.meter.connections(s.port) == 0, what="the connection gone")
    assert len(latencies) == 61


async def test_request_headers_over_64_kib_get_431_as_soon_as_they_arrive(
    tmp_path: Path,
) -> None:
    """Before: no limit, and CPU quadratic in the header's size (105 MiB: 10.7 s of CPU)."""

    def huge_header(port: int) -> tuple[bytes, int]:
        sock = raw_socket(port, rcvbuf=65536)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk, sent = b"a" * 65536, 0
        sock.settimeout(0.2)
        head = b""
        try:
            while sent < 20 * MiB and not head:
                sock.sendall(chunk)
                sent += len(chunk)
                with contextlib.suppress(TimeoutError, BlockingIOError):
                    head = sock.recv(65536)
        except OSError:
            pass  # closed after the answer
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            head += read_head(sock)
        sock.close()
        return head, sent

    async with stack(tmp_path) as s:
        (head, sent), latencies = await s.attack(huge_header)
        s.meter.report(f"one header of {sent // 1024} KiB", latencies)
        assert s.meter.cpu_s() - s.meter.cpu_start_s < 5
    assert head.startswith(b"HTTP/1.1 431"), head[:200]
    assert b"application/json" in head and b'"too_large"' in head, head
    assert sent <= 4 * 65536, sent  # refused once 64 KiB had arrived, not after megabytes


async def test_a_url_over_64_kib_is_414_in_the_contracts_shape(tmp_path: Path) -> None:
    def long_url(port: int) -> bytes:
        sock = raw_socket(port, rcvbuf=65536)
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /jobs/" + b"a" * (70 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
        sock.close()
        return answer

    async with stack(tmp_path) as s:
        answer = await asyncio.to_thread(long_url, s.port)
    assert answer.startswith(b"HTTP/1.1 414"), answer[:200]
    assert answer.endswith(b'{"error":{"code":"too_large","message":"the URL is over 64 KiB"}}')


async def _large_job(s: Stack) -> tuple[str, str]:
    """A finished job of 8 events of 500 KB: a 4 MB answer that a stuck client cannot take."""
    job, token = await submit(s.base, "count", {"n": 8, "size": 500_000})
    async with httpx.AsyncClient(base_url=s.base) as http:

        async def finished() -> bool:
            body = (await http.get(f"/jobs/{job}", params={"token": token})).json()
            return bool(body["status"] == "done")

        await wait_for(finished, timeout_s=30, what="the large job")
    return job, token


@pytest.mark.parametrize("path", ["/jobs/{job}", "/jobs/{job}/events"])
async def test_a_response_nobody_reads_is_dropped(tmp_path: Path, path: str) -> None:
    """Before: a GET whose client never read held ~3.9 MiB for ever; an event stream of an
    ended job was never closed."""

    def stuck_reader(port: int, target: str, count: int) -> list[float]:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        sockets = [raw_socket(port) for _ in range(count)]
        return send_then_wait_until_dropped(sockets, request, STALL_S + 2 * GRACE_S + 10)

    async with stack(tmp_path) as s:
        job, token = await _large_job(s)
        target = path.format(job=job) + f"?token={token}"
        dropped, latencies = await s.attack(stuck_reader, target, 20)
        s.meter.report(f"20 x GET {path} never read", latencies)
        await wait_for(lambda: s.meter.connections(s.port) == 0, what="every connection gone")
        assert s.meter.rss_mib() - s.meter.rss_start_mib < 16  # service.memory
    assert max(dropped) < STALL_S + 2 * GRACE_S + 5, dropped


async def test_a_socket_closed_with_1013_is_dropped_and_counts_until_then(
    tmp_path: Path,
) -> None:
    """Before: a 1013-closed socket kept its fd and ~3.7 MB of kernel memory until the client
    left, and no longer counted against MAX_SOCKETS."""

    def stuck_watchers(port: int, job: str, token: str, count: int) -> list[float]:
        watch = frame(f'{{"op":"watch","job":"{job}","token":"{token}"}}'.encode())
        sockets = [open_websocket(port) for _ in range(count)]
        return send_then_wait_until_dropped(sockets, watch, STALL_S + 3 * GRACE_S + 10)

    async with stack(tmp_path) as s:
        job, token = await _large_job(s)
        dropped, latencies = await s.attack(stuck_watchers, job, token, 20)
        s.meter.report("20 watchers that read nothing, closed with 1013", latencies)
        await wait_for(lambda: s.meter.connections(s.port) == 0, what="every connection gone")
    assert max(dropped) < STALL_S + 3 * GRACE_S + 5, dropped


async def test_every_open_connection_counts_against_max_sockets(tmp_path: Path) -> None:
    """Idle keep-alive connections hold a fd as a socket does: at MAX_SOCKETS a WebSocket is
    refused with 1013 and an event stream with 503, and there is room once they go."""
    async with stack(tmp_path, MAX_SOCKETS="4") as s:
        idle = [raw_socket(s.port) for _ in range(4)]
        for sock in idle:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_head(sock).startswith(b"HTTP/1.1 200")
        refused = open_websocket(s.port)
        assert await asyncio.to_thread(read_close_code, refused) == 1013
        refused.close()
        for sock in idle:
            sock.close()
        await wait_for(lambda: s.meter.connections(s.port) == 0, what="the idle ones gone")
        admitted = open_websocket(s.port)
        admitted.sendall(frame(b'{"op":"ping"}'))
        admitted.settimeout(5)
        assert b"pong" in admitted.recv(4096)
        admitted.close()


def trickle_a_body(port: int) -> float:
    """POST /jobs announcing 1,000 bytes and sending one every 0.2 s, until it is closed."""
    sock = raw_socket(port)
    sock.sendall(
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    start = time.monotonic()
    for _ in range(100):  # bounded: at most 100 bytes in 20 s
        if tcp_state(sock) != TCP_ESTABLISHED:
            break
        try:
            sock.sendall(b" ")
        except OSError:
            break
        time.sleep(0.2)  # the attacker's pace, not a wait for a condition
    took = time.monotonic() - start
    sock.close()
    return took


async def test_a_request_body_sent_a_byte_at_a_time_is_timed_out(tmp_path: Path) -> None:
    """Before: one byte every 5 s was never timed out; 278 such took every fd."""
    async with stack(tmp_path) as s:
        took, latencies = await s.attack(trickle_a_body)
        s.meter.report("a body trickled a byte every 0.2 s", latencies)
    assert took < DEADLINE_S + GRACE_S + 1, took


@pytest.mark.parametrize("unfinished", ["a first fragment", "half a frame"])
async def test_a_message_left_unfinished_closes_the_socket_with_1008(
    tmp_path: Path, unfinished: str
) -> None:
    """Before: each socket could hold MAX_FRAME_BYTES of an unfinished message for
    IDLE_TIMEOUT_S (200 sockets: +190 MiB, never given back)."""

    def hold(port: int, count: int) -> list[int | None]:
        sockets = [open_websocket(port) for _ in range(count)]
        for sock in sockets:
            if unfinished == "a first fragment":
                sock.sendall(frame(b'{"op":' + b" " * 60_000, OP_TEXT, fin=False))
            else:
                whole = frame(b"x" * 900_000)
                sock.sendall(whole[: len(whole) // 2])
        codes = [read_close_code(sock) for sock in sockets]
        for sock in sockets:
            sock.close()
        return codes

    async with stack(tmp_path) as s:
        codes, latencies = await s.attack(hold, 50)
        s.meter.report(f"50 sockets holding {unfinished}", latencies)
        await wait_for(lambda: s.meter.connections(s.port) == 0, what="every connection gone")
    assert codes == [1008] * 50, codes


async def test_requests_from_a_client_that_reads_no_reply_do_not_queue_without_bound(
    tmp_path: Path,
) -> None:
    """Before: replies bypassed MAX_SEND_QUEUE_BYTES; pings without reading queued 15.5 MB."""

    def ask_without_reading(port: int) -> tuple[int, float]:
        sock = open_websocket(port)
        sent = send_repeatedly(sock, frame(b'{"op":"ping"}'), 2_000_000)
        dropped_after = wait_until_dropped(sock, STALL_S + 3 * GRACE_S + 10)
        sock.close()
        return sent, dropped_after

    async with stack(tmp_path, MAX_SEND_QUEUE_BYTES=str(1 * MiB)) as s:
        (sent, _), latencies = await s.attack(ask_without_reading)
        s.meter.report(f"{sent} pings, no reply read", latencies)
        assert s.meter.growth_mib < 16, s.meter.growth_mib
        await wait_for(lambda: s.meter.connections(s.port) == 0, what="the connection gone")
