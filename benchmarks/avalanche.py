"""Reconnection avalanche: a gateway restarted under thousands of watching clients.

    python -m benchmarks.avalanche [--sockets 10000] [--per-job 100] [--job-seconds 90]
                                   [--mode pubsub] [--json out.json] [--plot docs/x.png]

--sockets clients (one socket and one watch each; --per-job of them watch the same job) follow
live `tick` jobs emitting 2 events per second. Once every client has received events, the
gateway is stopped with SIGTERM (its clients get 1001) and started again on the same port;
every client reconnects at once, with the shipped Python client's jittered back-off, and
resumes with `after` (benchmarks/resuming.py). The jobs run on to their end.

Reported: the old gateway's shutdown (SIGTERM to exit), the time from SIGTERM until the
first and until every client has an event on its new connection (p50, p99), the Redis
commands the new gateway sent to get there (in total and per resumed watch) and all Redis
executed in that window (the worker's writes included), and, at the end, events lost,
duplicated or out of order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.charts import cdf, chart
from benchmarks.network_drops import summary_ms
from benchmarks.resuming import ResumingWatch, Tally
from service.bench.harness import (
    CommandCount,
    Progress,
    gateway_figures,
    private_redis,
    raise_open_files_limit,
    running_stack,
    until,
)
from service.config import DELIVERY_MODES

BATCH = 200  # sockets opened at a time while setting up (the accept queue stays short)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    progress = Progress("avalanche")
    n_jobs = math.ceil(args.sockets / args.per_job)
    events = int(args.job_seconds * 2)
    extra = {"MAX_SOCKETS": str(args.sockets + 100)}
    async with private_redis(None) as url, running_stack(url, args.mode, extra) as stack:
        with stack.worker(concurrency=n_jobs + 8):
            await stack.kind_registered("tick")
            start_ns = time.time_ns() + 2_000_000_000  # spread the ticks over an interval
            payload = {"n": events, "interval_ms": 500, "start_ns": start_ns}
            jobs = await stack.submit_many("tick", payload, n_jobs)
            tally = Tally()
            watches = [
                ResumingWatch(stack.base, *jobs[i % n_jobs], tally=tally)
                for i in range(args.sockets)
            ]
            deadline = time.monotonic() + args.job_seconds + 300
            tasks: list[asyncio.Task[None]] = []
            for start in range(0, args.sockets, BATCH):
                batch = watches[start : start + BATCH]
                tasks += [asyncio.create_task(w.run(deadline)) for w in batch]
                opened = len(tasks)
                await until(lambda: tally.opened >= opened, 60)  # noqa: B023 - awaited here
                progress.show(len(tasks) / args.sockets / 2, f"{len(tasks)} sockets")
            await until(lambda: all(w.seqs for w in watches), 60)
            for w in watches:
                w.live.clear()
            await until(lambda: all(w.live.is_set() for w in watches), 30)  # all live now

            commands = await CommandCount(stack).begin()
            stopped_at = time.monotonic()
            for w in watches:
                w.mark = stopped_at
            await asyncio.to_thread(stack.stop_gateway)
            exited_at = time.monotonic()
            await stack.start_gateway()
            ready_at = time.monotonic()
            await until(
                lambda: all(w.back_at is not None for w in watches),
                120,
                progress=progress,
                fraction=lambda: (
                    0.5 + sum(w.back_at is not None for w in watches) / (2 * args.sockets)
                ),
                step_s=0.05,
            )
            all_back_at = time.monotonic()
            sent = await _gateway_commands(stack.base)
            executed = await commands.since()
            await until(lambda: all(t.done() for t in tasks), deadline - time.monotonic() + 5)
    progress.done()
    last = events + 1
    back = [w.back_at - stopped_at for w in watches if w.back_at is not None]
    return {
        "sockets": args.sockets,
        "jobs": n_jobs,
        "mode": args.mode,
        "shutdown_s": round(exited_at - stopped_at, 2),
        # /readyz waits in the same accept queue as every reconnecting client: an upper bound.
        "readyz_answered_s": round(ready_at - stopped_at, 2),
        "first_back_s": round(min(back), 2),
        "all_back_s": round(all_back_at - stopped_at, 2),
        "back_after_stop_ms": summary_ms(back),
        "close_codes": tally.close_codes,
        "failed_connects": tally.refused,
        "gateway_commands_to_resume": sent,
        "gateway_commands_per_watch": round(sent / args.sockets, 4),
        "redis_commands_executed_in_window": executed,
        "expected": args.sockets * last,
        "lost": sum(last - len(set(w.seqs)) for w in watches),
        "duplicates": sum(w.duplicates for w in watches),
        "out_of_order": sum(1 for w in watches if w.seqs != sorted(w.seqs)),
        "exact_watches": sum(1 for w in watches if w.exact(last)),
        "_back": back,
    }


async def _gateway_commands(base: str) -> int:
    figures = await gateway_figures(base)
    return int(figures.get("resultcast_redis_commands_total", 0))


def plot(result: dict[str, Any], path: Path) -> None:
    title = (
        f"{result['sockets']:,} sockets, gateway restarted: all back in "
        f"{result['all_back_s']:g} s, {result['lost']} lost, {result['duplicates']} duplicated"
    )
    with chart(path, title, "seconds after SIGTERM", "fraction of clients receiving again") as ax:
        cdf(ax, result["_back"], "clients back")
        ax.axvline(result["shutdown_s"], color="grey", linestyle=":", label="old gateway exited")
        ax.axvline(result["first_back_s"], color="grey", linestyle="--", label="first client back")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--per-job", type=int, default=100)
    parser.add_argument("--job-seconds", type=float, default=90.0)
    parser.add_argument("--mode", default="pubsub", choices=DELIVERY_MODES)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    raise_open_files_limit()
    result = await run(args)
    if args.plot:
        plot(result, args.plot)
    result.pop("_back")
    for key, value in result.items():
        print(f"{key:34} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
