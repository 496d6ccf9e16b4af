"""Churn soak: connections coming and going for half an hour, and nothing may grow.

    python -m benchmarks.soak --churn [--minutes 30] [--rate 100] [--sample-s 10]
                                      [--json out.json] [--plot docs/churn.png]

About --rate new connections per second (four in five WebSocket, one in five SSE), each
living 1 to 30 s and watching one job: half a job being written, three in ten a finished
job (replayed to its end), one in ten with a wrong token, one in ten sending bad frames
(malformed JSON, an unknown op) before it watches. Jobs are written throughout: `count` jobs
by a worker process (--jobs-per-s) and, one a second, jobs of a producer process.

Every --sample-s: the gateway's RSS, open file descriptors and asyncio tasks, its sockets,
watches and paused watches (from /metrics), Redis's connected clients, and the worker's and
the producer's RSS. The target: after the first minutes every series is flat (RSS growth
under 5 % from the fifth minute to the end), and when the load stops the connection counts
go back to where they were before it (sockets, watches and paused watches to zero).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.chaos_producer import POLL_S
from service.bench.harness import gateway_figures, private_redis, proc_stats, running_stack
from service.bench.sseload import SseProtocol
from service.bench.wsload import Received, WsProtocol, client_frame
from service.config import Settings
from service.processes import spawn, stop
from service.producer import AsyncProducer

MAX_LIFETIME_S = 30.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Jobs:
    """Jobs to watch: written now, and finished ones."""

    def __init__(self) -> None:
        self.live: list[tuple[float, str, str]] = []  # (submitted at, job, token)
        self.finished: list[tuple[str, str]] = []

    def add(self, job: str, token: str) -> None:
        now = time.monotonic()
        self.live.append((now, job, token))
        # A count job of 20 events 500 ms apart ends within about 10 s.
        while self.live and now - self.live[0][0] > 12:
            _, old, old_token = self.live.pop(0)
            self.finished.append((old, old_token))
            del self.finished[:-2000]

    def pick(self, rng: random.Random, finished: bool) -> tuple[str, str] | None:
        if finished and self.finished:
            return rng.choice(self.finished)
        if self.live:
            _, job, token = rng.choice(self.live)
            return job, token
        return None


async def write_jobs(
    base: str, jobs: Jobs, producer: AsyncProducer, *, per_s: float, plans: Path, stop_at: float
) -> None:
    rng = random.Random(1)
    last_producer_job = 0.0
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        while time.monotonic() < stop_at:
            payload = {"n": 20, "interval_ms": 500, "size": rng.randint(100, 2000)}
            reply = await http.post("/jobs", json={"kind": "count", "payload": payload})
            if reply.status_code == 202:
                jobs.add(reply.json()["job"], reply.json()["token"])
            if time.monotonic() - last_producer_job > 1.0:
                last_producer_job = time.monotonic()
                job, token = await producer.create(kind="churn")
                with plans.open("ab") as out:
                    out.write(orjson.dumps({"job": job, **payload}) + b"\n")
                jobs.add(job, token)
            await asyncio.sleep(1 / per_s)


class Connections:
    """Connections opened at a rate, each closed after its lifetime."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sink = Received()
        self.open = 0
        self.opened = 0
        self.refused = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, rng: random.Random, jobs: Jobs) -> None:
        task = asyncio.create_task(self._one(rng, jobs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, rng: random.Random, jobs: Jobs) -> None:
        roll = rng.random()
        picked = jobs.pick(rng, finished=0.5 <= roll < 0.8)
        if picked is None:
            return
        job, token = picked
        if 0.8 <= roll < 0.9:
            token = token[:-4] + "AAAA"  # forged
        sse = rng.random() < 0.2
        address = f"{self.host}:{self.port}"
        protocol: WsProtocol = (
            SseProtocol(address, f"/jobs/{job}/events?token={token}", self.sink, False)
            if sse
            else WsProtocol(address, "/ws", self.sink, False)
        )
        loop = asyncio.get_running_loop()
        self.open += 1
        try:
            await loop.create_connection(protocol.itself, self.host, self.port)
            await protocol.open
            self.opened += 1
            if not sse:
                if roll >= 0.9:  # bad frames first
                    assert protocol.transport is not None
                    protocol.transport.write(client_frame(b"{not json"))
                    protocol.send({"op": "dance"})
                protocol.send({"op": "watch", "job": job, "token": token})
            lifetime = rng.uniform(1.0, MAX_LIFETIME_S)
            try:
                await asyncio.wait_for(asyncio.shield(protocol.closed), lifetime)
            except TimeoutError:
                if protocol.transport is not None:
                    protocol.transport.close()
                await protocol.closed
        except (OSError, ConnectionError):
            self.refused += 1
            if protocol.transport is not None:
                protocol.transport.abort()
        finally:
            self.open -= 1

    async def drained(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))


async def sample(
    base: str, gateway_pid: int, others: dict[str, int], redis: Any, connections: Connections
) -> dict[str, float]:
    figures = await gateway_figures(base)
    info: Any = await redis.info("clients")
    row = {
        "gateway_rss_mib": round(proc_stats(gateway_pid)[0], 1),
        "gateway_fds": open_fds(gateway_pid),
        "gateway_tasks": figures.get("resultcast_asyncio_tasks", 0.0),
        "sockets": figures.get("resultcast_streams_open", 0.0),
        "watches": figures.get("resultcast_watches_active", 0.0),
        "paused": figures.get("resultcast_watches_paused", 0.0),
        "redis_clients": int(info["connected_clients"]),
        "client_connections": connections.open,
    }
    for name, pid in others.items():
        row[f"{name}_rss_mib"] = round(proc_stats(pid)[0], 1)
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    extra = {"MAX_SOCKETS": "20000", "LOG_LEVEL": "WARNING"}
    samples: list[dict[str, float]] = []
    async with (
        private_redis(None) as url,
        running_stack(url, args.mode, extra) as stack,
    ):
        tmp = tempfile.TemporaryDirectory(prefix="resultcast-churn-")
        plans = Path(tmp.name) / "producer-jobs.jsonl"
        plans.touch()
        producer_process = spawn(
            [sys.executable, "-m", "benchmarks.chaos_producer", str(plans)],
            stack.env,
            stdout=subprocess.DEVNULL,
        )
        try:
            with stack.worker(concurrency=500) as worker:
                await stack.kind_registered("count")
                settings = Settings.from_env(stack.env)
                others = {"worker": worker.pid, "producer": producer_process.pid}
                port = int(stack.base.rsplit(":", 1)[1])
                connections = Connections("127.0.0.1", port)
                started = time.monotonic()
                stop_at = started + args.minutes * 60
                async with AsyncProducer(settings=settings) as producer:
                    jobs = Jobs()
                    idle = await sample(
                        stack.base, stack.gateway_pid, others, stack.client, connections
                    )
                    print(f"before: {idle}", flush=True)
                    writer = asyncio.create_task(
                        write_jobs(
                            stack.base,
                            jobs,
                            producer,
                            per_s=args.jobs_per_s,
                            plans=plans,
                            stop_at=stop_at,
                        )
                    )
                    next_sample = started
                    while (now := time.monotonic()) < stop_at:
                        connections.start(rng, jobs)
                        if now >= next_sample:
                            row = await sample(
                                stack.base, stack.gateway_pid, others, stack.client, connections
                            )
                            row["minute"] = round((now - started) / 60, 2)
                            samples.append(row)
                            print(row, flush=True)
                            next_sample += args.sample_s
                        await asyncio.sleep(rng.expovariate(args.rate))
                    await writer
                    await connections.drained()
                    await asyncio.sleep(POLL_S + 15)  # the last jobs end, their watches too
                    after = await sample(
                        stack.base, stack.gateway_pid, others, stack.client, connections
                    )
                    print(f"after: {after}", flush=True)
        finally:
            stop(producer_process)
            tmp.cleanup()
    return summarise(args, idle, samples, after, connections)


def summarise(
    args: argparse.Namespace,
    idle: dict[str, float],
    samples: list[dict[str, float]],
    after: dict[str, float],
    connections: Connections,
) -> dict[str, Any]:
    settled = [s for s in samples if s["minute"] >= min(5.0, args.minutes / 6)]
    growth = {}
    for key in ("gateway_rss_mib", "worker_rss_mib", "producer_rss_mib", "gateway_fds"):
        first, last = settled[0][key], settled[-1][key]
        growth[key] = round(100 * (last - first) / first, 1) if first else None
    return {
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "connections_opened": connections.opened,
        "connections_refused": connections.refused,
        "events": connections.sink.events,
        "growth_pct_from_minute": settled[0]["minute"],
        "growth_pct": growth,
        "peak": {k: max(s[k] for s in samples) for k in samples[0] if k != "minute"},
        "before": idle,
        "after": after,
        "back_to_idle": all(
            after[k] <= idle[k] for k in ("sockets", "watches", "paused", "client_connections")
        ),
        "samples": samples,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [s["minute"] for s in samples]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for key in ("gateway_rss_mib", "worker_rss_mib", "producer_rss_mib"):
        top.plot(minutes, [s[key] for s in samples], label=key.replace("_", " "))
    top.set_ylabel("MiB")
    top.legend(fontsize="small")
    top.set_ylim(bottom=0)
    for key in ("sockets", "watches", "paused", "gateway_fds", "gateway_tasks", "redis_clients"):
        bottom.plot(minutes, [s[key] for s in samples], label=key.replace("_", " "))
    bottom.set_ylabel("count")
    bottom.set_xlabel("minutes")
    bottom.legend(fontsize="small", ncol=3)
    figure.suptitle(
        f"churn: ~{result['rate_per_s']:g} new connections/s for {result['minutes']:g} min, "
        f"gateway RSS {result['growth_pct']['gateway_rss_mib']:+g} % from minute "
        f"{result['growth_pct_from_minute']:g}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=100.0, help="new connections per second")
    parser.add_argument("--jobs-per-s", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)


async def main(args: argparse.Namespace) -> None:
    result = await run(args)
    if args.plot:
        plot(result, args.plot)
    for key, value in result.items():
        if key != "samples":
            print(f"{key:24} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
