"""What every benchmark needs: real processes, a Redis to count with, and measuring helpers.

The gateway and the workers run as child processes (`python -m service ...`), Redis is a
private `redis-server` unless a URL is given, and the calling process is the load generator.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as redis

from service.bench.wsload import Received, WsProtocol
from service.codec import event_frame
from service.dev import free_port, spawn, start_redis, stop
from service.keys import Keys
from service.migrate import migrate
from service.model import EventKind

KEYS = Keys()
BENCH_HANDLERS = "service.bench.handlers:HANDLERS"


def percentile_ms(values_ns: list[int], p: float) -> float:
    if not values_ns:
        return float("nan")
    ordered = sorted(values_ns)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1e6


class Progress:
    """One line on stderr that a phase keeps up to date."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.interactive = sys.stderr.isatty()

    def show(self, fraction: float, detail: str = "") -> None:
        width = 30
        done = int(max(0.0, min(1.0, fraction)) * width)
        line = f"{self.label:<22} [{'#' * done}{'.' * (width - done)}] {fraction:>4.0%} {detail}"
        if self.interactive:
            print(f"\r{line:<90}", end="", file=sys.stderr, flush=True)

    def done(self, detail: str = "") -> None:
        self.show(1.0, detail)
        if self.interactive:
            print(file=sys.stderr, flush=True)
        else:
            print(f"{self.label}: done {detail}", file=sys.stderr, flush=True)


async def until(
    predicate: Callable[[], bool],
    timeout_s: float,
    *,
    progress: Progress | None = None,
    fraction: Callable[[], float] | None = None,
    step_s: float = 0.01,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark condition not reached in {timeout_s:.0f}s")
        if progress is not None and fraction is not None:
            progress.show(fraction())
        await asyncio.sleep(step_s)


async def gateway_figures(base: str) -> dict[str, float]:
    """The gateway's own figures from `/metrics` (summed over labels), by metric name."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for attempt in range(5):
            try:
                text = (await http.get("/metrics")).text
                break
            except httpx.TransportError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2)
    figures: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            figures[name] = figures.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return figures


async def caught_up(base: str, timeout_s: float = 120.0) -> None:
    """Until the gateway has no catch-up left to do (its `resultcast_catch_up_backlog`)."""
    deadline = time.monotonic() + timeout_s
    while (backlog := (await gateway_figures(base))["resultcast_catch_up_backlog"]) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway still had {backlog:.0f} job(s) to catch up")
        await asyncio.sleep(0.05)


async def sleep_with_progress(seconds: float, progress: Progress) -> None:
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        progress.show(elapsed / seconds, f"{elapsed:.0f}/{seconds:.0f}s")
        await asyncio.sleep(min(0.5, seconds - elapsed))


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kib / 1024, (int(fields[11]) + int(fields[12])) / ticks


async def command_calls(client: redis.Redis) -> int:
    """Commands Redis itself has executed, all clients together (INFO commandstats)."""
    stats: Any = await client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def connections_named(client: redis.Redis, name: str) -> int:
    clients: Any = await client.client_list()
    return sum(1 for c in clients if c.get("name") == name)


async def write_first_events(
    client: redis.Redis, jobs: list[str], data_json: str, *, publish: bool
) -> None:
    """Store event 1 of every job, shaped as the emit script shapes it, in one pipeline;
    without `publish` it is exactly what a gateway misses while its subscriber is down."""
    pipe = client.pipeline(transaction=False)
    for job in jobs:
        now_ms = time.time_ns() // 1_000_000
        frame = event_frame(1, job, EventKind.DATA, now_ms, data_json.encode())
        pipe.xadd(KEYS.events(job), {"f": frame}, id="1-0")
        pipe.hset(KEYS.meta(job), "seq", 1)
        if publish:
            pipe.publish(KEYS.channel(job), frame)
    await pipe.execute()


def watch_all(sockets: list[WsProtocol], jobs: list[tuple[str, str]]) -> None:
    for index, ws in enumerate(sockets):
        job, token = jobs[index % len(jobs)]
        ws.send({"op": "watch", "job": job, "token": token})


def start_after_setup(jobs: int, base_s: float = 3.0) -> int:
    """When tick jobs should start (`start_ns`): after they are all submitted and watched.

    Submitting and watching take about 5 ms per job here; twice that, plus `base_s`, leaves
    a margin. Events emitted earlier are still delivered and checked, but not timed.
    """
    return time.time_ns() + int((base_s + jobs * 0.010) * 1e9)


async def watch_all_live(
    sockets: list[WsProtocol], jobs: list[tuple[str, str]], sink: Received
) -> None:
    """Watch, wait for every `watching` frame, and count latency from that moment on."""
    watch_all(sockets, jobs)
    await until(lambda: sink.frames - sink.events >= len(sockets), 120)
    sink.live_from_ns = time.time_ns()


async def close_all(sockets: list[WsProtocol]) -> None:
    for ws in sockets:
        if ws.transport is not None:
            ws.transport.close()
    await asyncio.gather(*(ws.closed for ws in sockets))


@dataclass
class Stack:
    """A running gateway (and its Redis) for one delivery mode."""

    base: str
    redis_url: str
    client: redis.Redis
    env: dict[str, str]
    gateway_pid: int

    async def submit_many(
        self, kind: str, payload: dict[str, Any], count: int, progress: Progress | None = None
    ) -> list[tuple[str, str]]:
        limits = httpx.Limits(max_connections=32)
        done = 0
        async with httpx.AsyncClient(base_url=self.base, limits=limits, timeout=60) as http:
            semaphore = asyncio.Semaphore(32)

            async def one() -> tuple[str, str]:
                nonlocal done
                async with semaphore:
                    reply = await http.post("/jobs", json={"kind": kind, "payload": payload})
                    reply.raise_for_status()
                    body = reply.json()
                    done += 1
                    if progress is not None and done % 50 == 0:
                        progress.show(done / count, f"submitting {done}/{count}")
                    return body["job"], body["token"]

            return list(await asyncio.gather(*(one() for _ in range(count))))

    @contextmanager
    def worker(self, concurrency: int) -> Iterator[subprocess.Popen[bytes]]:
        process = spawn(
            [
                sys.executable,
                "-m",
                "service",
                "worker",
                "--concurrency",
                str(concurrency),
                "--handlers",
                BENCH_HANDLERS,
            ],
            self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield process
        finally:
            stop(process)

    async def kind_registered(self, kind: str) -> None:
        for _ in range(400):
            if await self.client.hexists(KEYS.kinds, kind):
                return
            await asyncio.sleep(0.025)
        raise RuntimeError(f"no worker registered the job kind {kind!r}")


@asynccontextmanager
async def private_redis(url: str | None) -> AsyncIterator[str]:
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="resultcast-bench-") as tmp:
        process, private_url = start_redis(Path(tmp))
        try:
            yield private_url
        finally:
            stop(process)


@asynccontextmanager
async def running_stack(
    redis_url: str, mode: str, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    """Flush the benchmark Redis, migrate it, and run a gateway in `mode` against it."""
    client = redis.Redis.from_url(redis_url, protocol=2)
    try:
        await client.flushall()
        await migrate(client, KEYS, report=lambda _line: None)
        port = free_port()
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            SECRET_KEY=secrets.token_hex(16),
            DELIVERY_MODE=mode,
            LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            **(extra_env or {}),
        )
        base = f"http://127.0.0.1:{port}"
        # BENCH_GATEWAY_LOG=path keeps the gateway's log (at BENCH_LOG_LEVEL) for a closer look.
        log_path = os.environ.get("BENCH_GATEWAY_LOG")
        with open(log_path or os.devnull, "ab") as log_file:  # noqa: ASYNC230 - once, at start
            gateway = spawn(
                [sys.executable, "-m", "service", "gateway", "--port", str(port)],
                env,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        try:
            await _wait_ready(base, gateway)
            yield Stack(base, redis_url, client, env, gateway.pid)
        finally:
            stop(gateway)
    finally:
        await client.aclose()


async def _wait_ready(base: str, gateway: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(400):
            if gateway.poll() is not None:
                raise RuntimeError("the gateway exited at start (run it by hand to see why)")
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("the gateway did not become ready")
