"""What every benchmark needs: real processes, a Redis to count with, and measuring helpers.

The gateway and the workers run as child processes (`python -m service ...`), Redis is a
private `redis-server` unless a URL is given, and the calling process is the load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import redis.asyncio as redis

from service.bench.sseload import open_streams
from service.bench.wsload import Received, WsProtocol, open_sockets
from service.codec import event_frame
from service.keys import Keys
from service.local_redis import LocalCluster, start_redis
from service.migrate import migrate
from service.model import EventKind
from service.processes import SERVICE, free_port, spawn, stop, wait_ready
from service.streams import store_event

KEYS = Keys()
BENCH_HANDLERS = "service.bench.handlers:HANDLERS"


def percentile_ms(values_ns: list[int], p: float) -> float:
    if not values_ns:
        return float("nan")
    ordered = sorted(values_ns)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1e6


def latency_figures(latencies_ns: list[int]) -> dict[str, float]:
    """p50, p95, p99 and max of latencies in ns, in ms."""
    return {
        "p50_ms": percentile_ms(latencies_ns, 50),
        "p95_ms": percentile_ms(latencies_ns, 95),
        "p99_ms": percentile_ms(latencies_ns, 99),
        "max_ms": max(latencies_ns) / 1e6 if latencies_ns else float("nan"),
    }


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


async def metrics_text(base: str) -> str:
    """The gateway's `/metrics`, retried over a connection error or two."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for _ in range(4):
            with contextlib.suppress(httpx.TransportError):
                return (await http.get("/metrics")).text
            await asyncio.sleep(0.2)
        return (await http.get("/metrics")).text  # the fifth try: its error is raised


async def gateway_figures(base: str) -> dict[str, float]:
    """The gateway's own figures from `/metrics` (summed over labels), by metric name."""
    figures: dict[str, float] = {}
    for line in (await metrics_text(base)).splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            figures[name] = figures.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return figures


async def send_latency_buckets(base: str) -> dict[float, float]:
    """The gateway's own emit-to-send latency (`resultcast_delivery_latency_seconds`, one send
    in 8): cumulative counts by upper bound in ms, summed over modes."""
    buckets: dict[float, float] = {}
    for line in (await metrics_text(base)).splitlines():
        if line.startswith("resultcast_delivery_latency_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            bound_ms = float("inf") if bound == "+Inf" else float(bound) * 1000
            buckets[bound_ms] = buckets.get(bound_ms, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def send_latency_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """What the gateway itself measured between two readings: the share of sends within 10 ms
    of the emit, and the bucket that holds its p99 (an upper bound)."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return {"sends_timed": 0}
    p99_bound = next(bound for bound, count in counts.items() if count >= 0.99 * total)
    return {
        "sends_timed": int(total),
        "within_10ms": counts.get(10.0, 0.0) / total,
        "p99_at_most_ms": p99_bound,
    }


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


def raise_open_files_limit() -> None:
    """Let this process open as many files as the machine allows: thousands of sockets."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass(frozen=True)
class Pinning:
    """The server under test on a core of its own, everything else (this load generator,
    Redis, workers: children inherit it) on the others, so that its CPU per event is its own
    and not the share the load generator leaves it."""

    server: set[int]
    rest: set[int]

    @classmethod
    def split(cls) -> Pinning | None:
        """The last core for the server; None on a machine with fewer than two."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        return cls({cpus[-1]}, set(cpus[:-1]))

    def load_side(self) -> None:
        """This process, and every process it starts from now on, on the other cores."""
        os.sched_setaffinity(0, self.rest)

    def server_side(self, pid: int) -> None:
        """Every thread of process `pid` (and the threads it starts later) on the server's core."""
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), self.server)


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss_kib / 1024, cpu_seconds(pid)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's live threads, in nanoseconds' precision (schedstat): clock
    ticks (10 ms) would blur a phase that costs a tenth of a second."""
    if not Path(f"/proc/{pid}/schedstat").exists():  # a kernel without it: clock ticks
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class CommandCount:
    """Commands the primaries execute for clients from `begin()` on (INFO commandstats): less
    this meter's own INFO asks, and less replicas' acknowledgements (REPLCONF), which are
    Redis's own traffic."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._start = 0
        self._asks = 0  # asks already executed, so counted by later ones

    async def _total(self) -> int:
        total = 0
        for node in await self._stack.primaries():
            async with node:
                stats: Any = await node.info("commandstats")
            calls = {name: int(v["calls"]) for name, v in stats.items()}
            total += sum(calls.values()) - calls.get("cmdstat_replconf", 0)
            self._asks += 1
        return total

    async def begin(self) -> CommandCount:
        self._asks = 0
        self._start = await self._total()
        return self

    async def since(self) -> int:
        asks = self._asks
        return await self._total() - self._start - asks


async def connections_named(stack: Stack, name: str) -> int:
    """Connections named `name` on every node (a cluster's replicas included)."""
    count = 0
    for node in await stack.nodes(primaries_only=False):
        async with node:
            clients: Any = await node.client_list()
        count += sum(1 for c in clients if c.get("name") == name)
    return count


async def write_first_events(
    client: redis.Redis, jobs: list[str], data_json: str, *, publish: bool
) -> None:
    """Store event 1 of every job, shaped as the emit script shapes it, in one pipeline;
    without `publish` it is exactly what a gateway misses while its subscriber is down."""
    pipe = client.pipeline(transaction=False)
    for job in jobs:
        now_ms = time.time_ns() // 1_000_000
        frame = event_frame(1, job, EventKind.DATA, now_ms, data_json.encode())
        store_event(pipe, KEYS, job, 1, frame)
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
    await all_live(sockets, sink)


async def all_live(watchers: list[WsProtocol], sink: Received) -> None:
    """Wait until every watch answered (`watching`, or an event stream's opening), and count
    latency from that moment on."""
    await until(lambda: sink.frames - sink.events >= len(watchers), 120)
    sink.live_from_ns = time.time_ns()


async def close_all(sockets: list[WsProtocol]) -> None:
    for ws in sockets:
        if ws.transport is not None:
            ws.transport.close()
    await asyncio.gather(*(ws.closed for ws in sockets))


@dataclass
class Stack:
    """Running gateways (and their Redis, one server or a cluster) for one delivery mode."""

    bases: list[str]
    redis_url: str
    client: Any  # redis.Redis, or redis.RedisCluster on a cluster
    env: dict[str, str]
    gateways: list[subprocess.Popen[bytes]]
    cluster: bool = False
    transport: str = "ws"  # how the clients watch: "ws" or "sse"

    @property
    def base(self) -> str:
        return self.bases[0]

    @property
    def gateway_pids(self) -> list[int]:
        return [g.pid for g in self.gateways]

    def stop_gateway(self, index: int = 0) -> None:
        """SIGTERM gateway `index` (its clients get 1001) and wait until it has exited."""
        stop(self.gateways[index])

    async def start_gateway(self, index: int = 0) -> None:
        """Start gateway `index` again on its port; returns once it is ready."""
        port = int(self.bases[index].rsplit(":", 1)[1])
        self.gateways[index] = _spawn_gateway(port, self.env)
        await _wait_ready(self.bases[index], self.gateways[index])

    @property
    def gateway_pid(self) -> int:
        return self.gateway_pids[0]

    async def nodes(self, *, primaries_only: bool = True) -> list[redis.Redis]:
        """A client of its own for each node (to close after use): the primaries, or all."""
        if not self.cluster:
            return [redis.Redis.from_url(self.redis_url, protocol=2)]
        primaries = [(n.host, int(n.port)) for n in self.client.get_primaries()]
        if primaries_only:
            return [redis.Redis(host=host, port=port, protocol=2) for host, port in primaries]
        # redis-py's slot map may leave replicas out: ask the cluster itself.
        host, port = primaries[0]
        async with redis.Redis(host=host, port=port, protocol=2) as first:
            listing: Any = await first.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        # Each line: id host:port@bus flags master ping pong epoch link-state slots...
        addresses = [
            line.split()[1].split("@", 1)[0].rsplit(":", 1)
            for line in text.splitlines()
            if line.strip() and "fail" not in line.split()[2] and line.split()[7] == "connected"
        ]
        return [redis.Redis(host=h, port=int(p), protocol=2) for h, p in addresses]

    async def primaries(self) -> list[redis.Redis]:
        return await self.nodes()

    def gateways_cpu_s(self) -> float:
        return sum(proc_stats(pid)[1] for pid in self.gateway_pids)

    def gateways_rss_mib(self) -> float:
        return sum(proc_stats(pid)[0] for pid in self.gateway_pids)

    async def open_watchers(
        self, jobs: list[tuple[str, str]], sink: Received, *, keep_seqs: bool = False
    ) -> list[WsProtocol]:
        """One client per job, watching it, spread over the gateways: a WebSocket that sends
        its watch, or an event stream (`transport`)."""
        if self.transport == "ws":
            sockets = await self.open_sockets(len(jobs), sink, keep_seqs=keep_seqs)
            watch_all(sockets, jobs)
            return sockets
        n = len(self.bases)
        per_gateway = [
            await open_streams(base, jobs[i::n], sink, keep_seqs)
            for i, base in enumerate(self.bases)
        ]
        return [per_gateway[i % n][i // n] for i in range(len(jobs))]

    async def open_sockets(
        self, count: int, sink: Received, *, keep_seqs: bool = False
    ) -> list[WsProtocol]:
        """`count` sockets spread over the gateways: socket i on gateway i mod N, as a load
        balancer's round robin would place them."""
        per_gateway = [
            await open_sockets(base, len(range(i, count, len(self.bases))), sink, keep_seqs)
            for i, base in enumerate(self.bases)
        ]
        return [per_gateway[i % len(self.bases)][i // len(self.bases)] for i in range(count)]

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
        # BENCH_WORKER_LOG=path keeps the worker's log (at BENCH_LOG_LEVEL).
        with open(os.environ.get("BENCH_WORKER_LOG") or os.devnull, "ab") as log_file:
            process = self._spawn_worker(concurrency, log_file)
        try:
            yield process
        finally:
            stop(process)

    def _spawn_worker(self, concurrency: int, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        return spawn(
            [*SERVICE, "worker", "--concurrency", str(concurrency), "--handlers", BENCH_HANDLERS],
            self.env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )

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
async def private_cluster(url: str | None) -> AsyncIterator[str]:
    """A private local Redis Cluster (three primaries, a replica each) unless `url` names a
    node of one; yields a node's URL."""
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="resultcast-bench-cluster-") as tmp:
        cluster = LocalCluster(Path(tmp))
        try:
            await asyncio.to_thread(cluster.start)
            yield cluster.url
        finally:
            cluster.stop()


@asynccontextmanager
async def running_stack(
    redis_url: str,
    mode: str,
    extra_env: dict[str, str] | None = None,
    *,
    cluster: bool = False,
    gateways: int = 1,
    job_streams: int = 1,
) -> AsyncIterator[Stack]:
    """Flush the benchmark Redis (every primary of a cluster), migrate it, and run
    `gateways` gateway processes in `mode` against it."""
    keys = Keys(job_streams=job_streams)
    client: Any = (
        redis.RedisCluster.from_url(redis_url, protocol=2)
        if cluster
        else redis.Redis.from_url(redis_url, protocol=2)
    )
    try:
        if cluster:
            await client.flushall(target_nodes=client.PRIMARIES)
        else:
            await client.flushall()
        await migrate(client, keys, report=lambda _line: None)
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "REDIS_CLUSTER": "true" if cluster else "false",
            "JOB_STREAMS": str(job_streams),
            "SECRET_KEY": secrets.token_hex(16),
            "DELIVERY_MODE": mode,
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            **(extra_env or {}),
        }
        stack = Stack([], redis_url, client, env, [], cluster)
        try:
            for _ in range(gateways):
                port = free_port()
                stack.gateways.append(_spawn_gateway(port, env))
                stack.bases.append(f"http://127.0.0.1:{port}")
            for base, gateway in zip(stack.bases, stack.gateways, strict=True):
                await _wait_ready(base, gateway)
            yield stack
        finally:
            for gateway in stack.gateways:
                stop(gateway)
    finally:
        await client.aclose()


def _spawn_gateway(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # BENCH_GATEWAY_LOG=path keeps the gateways' log (at BENCH_LOG_LEVEL) for a closer look.
    with open(os.environ.get("BENCH_GATEWAY_LOG") or os.devnull, "ab") as log_file:
        return spawn(
            [*SERVICE, "gateway", "--port", str(port)],
            env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )


async def _wait_ready(base: str, gateway: subprocess.Popen[bytes]) -> None:
    port = int(base.rsplit(":", 1)[1])
    if not await wait_ready("127.0.0.1", port, [gateway], timeout_s=20):
        if gateway.poll() is not None:
            raise RuntimeError("the gateway exited at start (run it by hand to see why)")
        raise RuntimeError("the gateway did not become ready")
