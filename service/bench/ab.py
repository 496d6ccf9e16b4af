"""The A/B benchmark's phases: the same workload against one delivery mode.

- idle: sockets watching silent jobs; what Redis, memory and CPU that costs.
- burst: jobs emitting as fast as the worker can; throughput, latency, and exactness.
- steady: a fixed event rate over many sockets; the latency distribution under load.
- overnight: the seed's headline, derived from idle: commands for one tab open 8 hours.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from service.bench.harness import (
    CommandCount,
    Progress,
    Stack,
    all_live,
    close_all,
    connections_named,
    latency_figures,
    private_cluster,
    private_redis,
    running_stack,
    sleep_with_progress,
    start_after_setup,
    until,
)
from service.bench.meter import costs, snapshot
from service.bench.params import Params
from service.bench.wsload import Received, WsProtocol

SEED_OVERNIGHT = {"before (XREAD block 100 ms)": 500_000, "after (XREAD block 15 s)": 2_500}


@dataclass
class Topology:
    """Where a run's gateways and Redis are: one server or a cluster, how many gateways."""

    cluster: bool = False
    gateways: int = 1
    job_streams: int = 1
    transport: str = "ws"  # how clients watch: WebSocket, or Server-Sent Events ("sse")

    def label(self) -> str:
        redis = "Redis Cluster (3 primaries, 3 replicas)" if self.cluster else "one Redis"
        clients = "WebSocket" if self.transport == "ws" else "Server-Sent Events"
        return (
            f"{redis}, {self.gateways} gateway(s), JOB_STREAMS={self.job_streams}, "
            f"clients over {clients}"
        )


@dataclass
class ModeResult:
    mode: str
    idle: dict[str, float] = field(default_factory=dict)
    burst: dict[str, Any] = field(default_factory=dict)
    steady: dict[str, Any] = field(default_factory=dict)
    overnight: dict[str, float] = field(default_factory=dict)
    burst_latencies_ns: list[int] = field(default_factory=list)
    steady_latencies_ns: list[int] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "idle": self.idle,
            "burst": self.burst,
            "steady": self.steady,
            "overnight": self.overnight,
        }


async def idle_phase(stack: Stack, p: Params) -> dict[str, float]:
    progress = Progress(f"{stack.env['DELIVERY_MODE']}: idle")
    # No worker runs, so these jobs stay queued and silent.
    jobs = await stack.submit_many("echo", {}, p.idle_sockets, progress)
    rss_empty = stack.gateways_rss_mib()
    sink = Received()
    sockets = await stack.open_watchers(jobs, sink)
    await until(lambda: sink.frames >= p.idle_sockets, 120)
    await settled(stack)
    commands = await CommandCount(stack).begin()
    cpu_0 = stack.gateways_cpu_s()
    await sleep_with_progress(p.idle_seconds, progress)
    rss_1, cpu_1 = stack.gateways_rss_mib(), stack.gateways_cpu_s()
    calls = await commands.since()
    connections = await connections_named(stack, "resultcast-gateway")
    progress.done()
    await close_all(sockets)
    socket_hours = p.idle_sockets * p.idle_seconds / 3600
    return {
        "sockets": p.idle_sockets,
        "seconds": p.idle_seconds,
        "redis_commands": calls,
        "commands_per_socket_hour": calls / socket_hours,
        "redis_connections": connections,
        "gateway_rss_mib": rss_1,
        "rss_kib_per_socket": max(0.0, rss_1 - rss_empty) * 1024 / p.idle_sockets,
        "cpu_s_per_socket_hour": (cpu_1 - cpu_0) / socket_hours,
    }


async def settled(stack: Stack, quiet_s: float = 2.0, timeout_s: float = 120.0) -> None:
    """Wait until the gateway's Redis connections stop changing: every watch is in place
    (in `xread` mode each one has opened its connection) and its catch-up is done."""
    deadline = time.monotonic() + timeout_s
    previous = -1
    while time.monotonic() < deadline:
        current = await connections_named(stack, "resultcast-gateway")
        if current == previous:
            return
        previous = current
        await asyncio.sleep(quiet_s)


def exactness(sockets: list[WsProtocol], expected: int) -> dict[str, int]:
    lost = duplicated = out_of_order = 0
    for ws in sockets:
        for seqs in ws.seqs.values():
            unique = set(seqs)
            lost += expected - len(unique & set(range(1, expected + 1)))
            duplicated += len(seqs) - len(unique)
            out_of_order += sum(1 for a, b in pairwise(seqs) if b < a)
    return {"lost": lost, "duplicated": duplicated, "out_of_order": out_of_order}


def delivery_figures(sink: Received, sockets: list[WsProtocol], expected: int) -> dict[str, Any]:
    """Latency of the events timed, how many were not, and exactness per socket."""
    return {
        **latency_figures(sink.latencies_ns),
        "emitted_before_watches_were_live": sink.before_live,
        **exactness(sockets, expected),
    }


async def _run_ticks(
    stack: Stack,
    label: str,
    *,
    sockets_count: int,
    payload: dict[str, Any],
    expected: int,
    timeout_s: float,
) -> tuple[Received, list[WsProtocol], dict[str, Any]]:
    progress = Progress(label)
    sink = Received()
    with stack.worker(concurrency=sockets_count + 8):
        await stack.kind_registered("tick")
        jobs = await stack.submit_many("tick", payload, sockets_count, progress)
        sockets = await stack.open_watchers(jobs, sink, keep_seqs=True)
        await all_live(sockets, sink)
        before, delivered_before = await snapshot(stack), sink.events
        total = sockets_count * expected
        await until(
            lambda: sink.events >= total,
            timeout_s,
            progress=progress,
            fraction=lambda: sink.events / total,
        )
        spent = costs(before, await snapshot(stack), sink.events - delivered_before)
    progress.done()
    await close_all(sockets)
    return sink, sockets, spent


async def burst_phase(stack: Stack, p: Params, result: ModeResult) -> None:
    # All jobs start together a moment after submission, once every socket watches.
    start_ns = start_after_setup(p.burst_jobs)
    payload = {"n": p.burst_events, "interval_ms": 0, "start_ns": start_ns}
    expected = p.burst_events + 1
    sink, sockets, spent = await _run_ticks(
        stack,
        f"{result.mode}: burst",
        sockets_count=p.burst_jobs,
        payload=payload,
        expected=expected,
        timeout_s=300,
    )
    span_s = max(1e-9, (sink.last_ns - sink.first_ns) / 1e9)
    result.burst_latencies_ns = sink.latencies_ns
    result.burst = {
        "jobs": p.burst_jobs,
        "events_per_job": p.burst_events,
        "delivered": sink.events,
        "events_per_s": sink.events / span_s,
        **delivery_figures(sink, sockets, expected),
        **spent,
    }


async def steady_phase(stack: Stack, p: Params, result: ModeResult) -> None:
    interval_ms = p.steady_sockets * 1000 / p.steady_rate
    n = max(1, int(p.steady_seconds * 1000 / interval_ms))
    start_ns = start_after_setup(p.steady_sockets)
    payload = {"n": n, "interval_ms": interval_ms, "start_ns": start_ns}
    sink, sockets, spent = await _run_ticks(
        stack,
        f"{result.mode}: steady",
        sockets_count=p.steady_sockets,
        payload=payload,
        expected=n + 1,
        timeout_s=p.steady_seconds + 120,
    )
    result.steady_latencies_ns = sink.latencies_ns
    result.steady = {
        "sockets": p.steady_sockets,
        "events_per_s": p.steady_rate,
        "events": sink.events,
        **delivery_figures(sink, sockets, n + 1),
        **spent,
    }


def overnight(idle: dict[str, float]) -> dict[str, float]:
    """Redis commands for one tab open 8 hours, from the idle phase's measured rate."""
    return {"commands_one_tab_8h": idle["commands_per_socket_hour"] * 8}


async def measure(
    redis_url: str | None,
    topology: Topology,
    modes: list[str],
    *,
    phases: set[str],
    params: Params,
    extra_env: dict[str, str] | None = None,
) -> list[ModeResult]:
    """The phases for each delivery mode, on a private Redis (or cluster) unless a URL is given."""
    results: list[ModeResult] = []
    redis_server = private_cluster if topology.cluster else private_redis
    async with redis_server(redis_url) as url:
        for mode in modes:
            result = ModeResult(mode)
            async with running_stack(
                url,
                mode,
                extra_env,
                cluster=topology.cluster,
                gateways=topology.gateways,
                job_streams=topology.job_streams,
            ) as stack:
                stack.transport = topology.transport
                if "idle" in phases:
                    result.idle = await idle_phase(stack, params)
                    result.overnight = overnight(result.idle)
                if "burst" in phases:
                    await burst_phase(stack, params, result)
                if "steady" in phases:
                    await steady_phase(stack, params, result)
            results.append(result)
    return results
