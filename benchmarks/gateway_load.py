"""Gateway load benchmark: throughput, latency, idle cost and catch-up of one gateway process.

Everything real and separate: a private redis-server, the gateway (`python -m service gateway`)
and a worker (`python -m service worker`) as child processes, and this process as the load
generator with a lean WebSocket client (benchmarks/wsload.py).

    python -m benchmarks.gateway_load [--phases throughput,latency,idle,catchup] [--mode pubsub]

Phases (each with its own flags):
- throughput: --sockets 1000 sockets, --jobs 100 jobs (sockets spread evenly over them), each
  job emitting --events 500 events as fast as the worker can; delivered events/s at the clients.
- latency: --latency-sockets 1000 sockets, one job each, one event per job per second
  (1,000 events/s) for --latency-seconds 10; emit-to-receipt latency percentiles.
- idle: --idle-sockets 10000 sockets, one silent job each, for --idle-seconds 30: gateway RSS,
  CPU, Redis commands (INFO commandstats) and Redis connections.
- catchup: with the idle sockets still open, the subscriber connection is killed and one event
  is written for every watched job at once; time until every socket has its event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as redis

from benchmarks.wsload import Received, WsProtocol, open_sockets
from service.dev import free_port, spawn, start_redis, stop
from service.keys import Keys
from service.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
KEYS = Keys()


def percentile(values: list[int], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1e6


@contextmanager
def service(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = spawn(
        [sys.executable, "-m", "service", *args],
        env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        stop(process)


async def wait_ready(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(200):
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("the gateway did not become ready")


async def submit_many(
    base: str, kind: str, payload: dict[str, Any], count: int
) -> list[tuple[str, str]]:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        semaphore = asyncio.Semaphore(32)

        async def one() -> tuple[str, str]:
            async with semaphore:
                reply = (await http.post("/jobs", json={"kind": kind, "payload": payload})).json()
                return reply["job"], reply["token"]

        return await asyncio.gather(*(one() for _ in range(count)))


def watch_all(sockets: list[WsProtocol], jobs: list[tuple[str, str]]) -> None:
    for index, ws in enumerate(sockets):
        job, token = jobs[index % len(jobs)]
        ws.send({"op": "watch", "job": job, "token": token})


async def until(predicate: Any, timeout_s: float, step_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached in time")
        await asyncio.sleep(step_s)


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    rss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kib / 1024, (int(fields[11]) + int(fields[12])) / ticks


async def command_calls(client: redis.Redis) -> int:
    stats: Any = await client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def gateway_connections(client: redis.Redis) -> int:
    clients: Any = await client.client_list()
    return sum(1 for c in clients if c.get("name") == "resultcast-gateway")


async def close_all(sockets: list[WsProtocol]) -> None:
    for ws in sockets:
        if ws.transport is not None:
            ws.transport.close()
    await asyncio.gather(*(ws.closed for ws in sockets))


async def registered(client: redis.Redis, kind: str) -> None:
    for _ in range(400):
        if await client.hexists(KEYS.kinds, kind):
            return
        await asyncio.sleep(0.025)
    raise RuntimeError(f"no worker registered {kind!r}")


async def phase_throughput(
    base: str, env: dict[str, str], client: redis.Redis, args: argparse.Namespace
) -> dict[str, Any]:
    sink = Received()
    sockets = await open_sockets(base, args.sockets, sink, keep_seqs=True)
    with service(
        ["worker", "--concurrency", str(args.jobs), "--handlers", "benchmarks.handlers:HANDLERS"],
        env,
    ):
        await registered(client, "tick")
        jobs = await submit_many(base, "tick", {"n": args.events, "interval_ms": 0}, args.jobs)
        watch_all(sockets, jobs)
        expected = args.sockets * (args.events + 1)
        await until(lambda: sink.events >= expected, 300)
    span_s = (sink.last_ns - sink.first_ns) / 1e9
    expected_seqs = list(range(1, args.events + 2))
    per_socket_ok = all(
        list(ws.seqs) and all(seqs == expected_seqs for seqs in ws.seqs.values()) for ws in sockets
    )
    await close_all(sockets)
    return {
        "deliveries": sink.events,
        "seconds": span_s,
        "events_per_s": sink.events / span_s,
        "latency_p50_ms": percentile(sink.latencies_ns, 50),
        "latency_p99_ms": percentile(sink.latencies_ns, 99),
        "in_order_no_loss": per_socket_ok,
    }


async def phase_latency(
    base: str, env: dict[str, str], client: redis.Redis, args: argparse.Namespace
) -> dict[str, Any]:
    sink = Received()
    sockets = await open_sockets(base, args.latency_sockets, sink)
    n = args.latency_seconds
    with service(
        [
            "worker",
            "--concurrency",
            str(args.latency_sockets + 10),
            "--handlers",
            "benchmarks.handlers:HANDLERS",
        ],
        env,
    ):
        await registered(client, "tick")
        # Every job starts ticking in 5 s (spread over a second), once all watches are live.
        start_ns = time.time_ns() + 5_000_000_000
        payload = {"n": n, "interval_ms": 1000, "start_ns": start_ns}
        jobs = await submit_many(base, "tick", payload, args.latency_sockets)
        watch_all(sockets, jobs)
        await until(lambda: sink.events >= args.latency_sockets * (n + 1), n + 60)
    await close_all(sockets)
    lat = sink.latencies_ns
    return {
        "events": sink.events,
        "rate_per_s": args.latency_sockets,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) / 1e6,
    }


async def phase_idle_and_catchup(
    base: str, gateway_pid: int, client: redis.Redis, args: argparse.Namespace, phases: set[str]
) -> dict[str, Any]:
    count = args.idle_sockets
    jobs = await submit_many(base, "echo", {}, count)  # no worker runs: they stay silent
    watched = Received()
    rss_before, _ = proc_stats(gateway_pid)
    sockets = await open_sockets(base, count, watched, keep_seqs=True)
    watch_all(sockets, jobs)
    await until(lambda: watched.frames >= count, 120)  # every `watching` frame
    await asyncio.sleep(1.0)  # let the watch catch-ups finish
    result: dict[str, Any] = {}
    if "idle" in phases:
        calls_0 = await command_calls(client)
        _, cpu_0 = proc_stats(gateway_pid)
        await asyncio.sleep(args.idle_seconds)
        rss_1, cpu_1 = proc_stats(gateway_pid)
        calls = await command_calls(client) - calls_0 - 1  # less the INFO that measured it
        hours = args.idle_seconds / 3600
        result["idle"] = {
            "sockets": count,
            "seconds": args.idle_seconds,
            "gateway_rss_mib": rss_1,
            "rss_per_socket_kib": (rss_1 - rss_before) * 1024 / count,
            "gateway_cpu_percent": (cpu_1 - cpu_0) / args.idle_seconds * 100,
            "redis_commands": calls,
            "commands_per_socket_hour": calls / count / hours,
            "gateway_redis_connections": await gateway_connections(client),
        }
    if "catchup" in phases:
        # Write one event per watched job without publishing it: exactly what a gateway misses
        # while its subscriber is down. Then drop the subscriber; only catch-up can deliver.
        pipe = client.pipeline(transaction=False)
        for job, _ in jobs:
            frame = (
                f'{{"seq":1,"job":"{job}","id":"1-0","type":"event","event":"data",'
                f'"ts":{time.time_ns() // 1_000_000},"data":{{"missed":true}}}}'
            )
            pipe.xadd(KEYS.events(job), {"f": frame}, id="1-0")
            pipe.hset(KEYS.meta(job), "seq", 1)
        await pipe.execute()
        before = watched.events
        started = time.perf_counter()
        await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]
        await until(lambda: watched.events - before >= count, 60, step_s=0.001)
        total_s = time.perf_counter() - started
        exact = all(list(ws.seqs.values()) == [[1]] for ws in sockets)
        result["catchup"] = {
            "watched_jobs": count,
            "kill_to_all_delivered_s": total_s,
            "exactly_once": exact and watched.events - before == count,
        }
    await close_all(sockets)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description="resultcast gateway load benchmark")
    parser.add_argument("--phases", default="throughput,latency,idle,catchup")
    parser.add_argument("--mode", default="pubsub", choices=["pubsub", "xread"])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--latency-sockets", type=int, default=1000)
    parser.add_argument("--latency-seconds", type=int, default=10)
    parser.add_argument("--idle-sockets", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as tmp:
        redis_process, url = start_redis(Path(tmp))
        client = redis.Redis.from_url(url, protocol=2)
        try:
            await migrate(client, KEYS, report=lambda _line: None)
            port = free_port()
            env = dict(
                os.environ,
                REDIS_URL=url,
                SECRET_KEY=secrets.token_hex(16),
                DELIVERY_MODE=args.mode,
                LOG_LEVEL="WARNING",
                PYTHONPATH=str(ROOT),
            )
            base = f"http://127.0.0.1:{port}"
            with service(["gateway", "--port", str(port)], env) as gateway:
                await wait_ready(base)
                report: dict[str, Any] = {"mode": args.mode}
                if "throughput" in phases:
                    report["throughput"] = await phase_throughput(base, env, client, args)
                    print("throughput", report["throughput"], flush=True)
                if "latency" in phases:
                    report["latency"] = await phase_latency(base, env, client, args)
                    print("latency", report["latency"], flush=True)
                if phases & {"idle", "catchup"}:
                    more = await phase_idle_and_catchup(base, gateway.pid, client, args, phases)
                    for name, figures in more.items():
                        print(name, figures, flush=True)
        finally:
            await client.aclose()
            stop(redis_process)


if __name__ == "__main__":
    asyncio.run(main())
