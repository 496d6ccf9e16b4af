"""Soak and recovery: memory and Redis commands over a long idle period, then a Redis restart;
or, with --churn, connections coming and going (benchmarks/churn.py).

    python -m benchmarks.soak [--sockets 2000] [--minutes 60] [--sample-s 30] [--mode pubsub]
    python -m benchmarks.soak --churn [--minutes 30] [--rate 100] [--sample-s 10]

Idle phase: --sockets sockets watch silent jobs for --minutes (the gateway's IDLE_TIMEOUT_S is
raised past the soak, as for tabs that stay open); every --sample-s it prints the
gateway's RSS and the Redis commands executed since the start (INFO commandstats, all
clients). Memory should stay flat and commands at zero (pubsub) or at the block rate (xread).

Recovery phase: Redis (with its append-only file) is killed and restarted; once it answers,
every watched job gets one event written. Reported: the time from Redis answering again until
every socket has received its event, and whether each got it exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

import redis.asyncio as redis

from benchmarks import churn
from service.bench.harness import (
    CommandCount,
    close_all,
    proc_stats,
    raise_open_files_limit,
    running_stack,
    until,
    watch_all,
    write_first_events,
)
from service.bench.wsload import Received, WsProtocol, open_sockets
from service.config import DELIVERY_MODES
from service.local_redis import start_redis
from service.processes import free_port, stop


def start_durable_redis(data: Path, port: int) -> subprocess.Popen[bytes]:
    """Redis that keeps every write across SIGKILL (fsync always), on a fixed port."""
    return start_redis(data, port, ("--appendfsync", "always"))[0]


async def recovery(
    redis_process: subprocess.Popen[bytes],
    *,
    data: Path,
    port: int,
    jobs: list[tuple[str, str]],
    sink: Received,
    sockets: list[WsProtocol],
) -> subprocess.Popen[bytes]:
    """Kill Redis, bring it back, write one event per job; time until every socket has it."""
    redis_process.kill()
    redis_process.wait()
    redis_process = start_durable_redis(data, port)
    back = time.perf_counter()
    before = sink.events
    fresh = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0", protocol=2)
    await write_first_events(fresh, [job for job, _ in jobs], '{"after":"restart"}', publish=True)
    await fresh.aclose()
    await until(lambda: sink.events - before >= len(sockets), 120, step_s=0.005)
    recovery_s = time.perf_counter() - back
    exact = all(list(ws.seqs.values()) == [[1]] for ws in sockets)
    print(
        f"recovery: every socket had its event {recovery_s:.2f} s after Redis "
        f"answered again; exactly once: {exact}",
        flush=True,
    )
    return redis_process


async def main() -> None:
    parser = argparse.ArgumentParser(description="resultcast soak and recovery")
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--minutes", type=float, help="default 60, or 30 with --churn")
    parser.add_argument("--sample-s", type=float, help="default 30, or 10 with --churn")
    parser.add_argument("--mode", default="pubsub", choices=DELIVERY_MODES)
    parser.add_argument("--churn", action="store_true", help="connections coming and going")
    churn.add_arguments(parser)
    args = parser.parse_args()
    raise_open_files_limit()
    if args.churn:
        args.minutes = args.minutes or 30.0
        args.sample_s = args.sample_s or 10.0
        await churn.main(args)
        return
    args.minutes = args.minutes or 60.0
    args.sample_s = args.sample_s or 30.0
    with tempfile.TemporaryDirectory(prefix="resultcast-soak-") as tmp:
        port = free_port()
        redis_process = start_durable_redis(Path(tmp), port)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            async with running_stack(
                url, args.mode, {"IDLE_TIMEOUT_S": str(args.minutes * 60 + 600)}
            ) as stack:
                jobs = await stack.submit_many("echo", {}, args.sockets)  # no worker: silent
                sink = Received()
                sockets = await open_sockets(stack.base, args.sockets, sink, keep_seqs=True)
                watch_all(sockets, jobs)
                await until(lambda: sink.frames >= args.sockets, 120)
                await asyncio.sleep(2.0)
                commands = await CommandCount(stack).begin()
                started = time.monotonic()
                print(f"{'minute':>7} {'rss MiB':>9} {'commands':>9}", flush=True)
                while (elapsed := time.monotonic() - started) < args.minutes * 60:
                    rss, _ = proc_stats(stack.gateway_pid)
                    calls = await commands.since()
                    print(f"{elapsed / 60:>7.1f} {rss:>9.1f} {calls:>9}", flush=True)
                    await asyncio.sleep(min(args.sample_s, args.minutes * 60 - elapsed))
                rss, _ = proc_stats(stack.gateway_pid)
                calls = await commands.since()
                print(f"{args.minutes:>7.1f} {rss:>9.1f} {calls:>9}", flush=True)

                redis_process = await recovery(
                    redis_process, data=Path(tmp), port=port, jobs=jobs, sink=sink, sockets=sockets
                )
                await close_all(sockets)
        finally:
            stop(redis_process)


if __name__ == "__main__":
    asyncio.run(main())
