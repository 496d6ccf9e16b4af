"""Delivery through network drops: every connection cut at random, clients resuming.

    python -m benchmarks.network_drops [--clients 2000] [--events 120] [--rate 2]
                                       [--cut-every-s 15] [--mode pubsub]
                                       [--json out.json] [--plot docs/drops.png]

--clients clients each watch their own job, which emits --events events at --rate per second
(the `tick` kind: each event carries its emit time) and then `done`. Every client reaches
the gateway through a TCP proxy this script starts, which resets each connection after a
random lifetime around --cut-every-s seconds. A client reconnects and resumes with `after`,
with the shipped Python client's jittered back-off (benchmarks/resuming.py).

Reported: delivered % (distinct events received over events emitted), duplicates, events
out of order, the cuts made, and per resume: from the watch sent again to the first event
it had missed (p50/p99), from the cut to that event (back-off included), and that event's
delay from emit to receipt. The figure peers publish is the last kind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.charts import cdf, chart
from benchmarks.cutting_proxy import CuttingProxy
from benchmarks.resuming import ResumingWatch, Tally
from service.bench.harness import (
    Progress,
    percentile_ms,
    private_redis,
    proc_stats,
    raise_open_files_limit,
    running_stack,
    until,
)
from service.config import DELIVERY_MODES


def summary_ms(seconds: list[float]) -> dict[str, float | None]:
    """p50, p99 and max in ms of durations in seconds (None without any)."""
    if not seconds:
        return {"p50": None, "p99": None, "max": None}
    ns = [int(s * 1e9) for s in seconds]
    return {
        "p50": round(percentile_ms(ns, 50), 1),
        "p99": round(percentile_ms(ns, 99), 1),
        "max": round(max(ns) / 1e6, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    progress = Progress("drops")
    extra = {"MAX_SOCKETS": str(args.clients * 2 + 100)}
    async with private_redis(None) as url, running_stack(url, args.mode, extra) as stack:
        proxy = CuttingProxy([int(stack.base.rsplit(":", 1)[1])], args.cut_every_s)
        proxied = await proxy.start()
        with stack.worker(concurrency=args.clients + 16):
            await stack.kind_registered("tick")
            # Every job starts a few seconds from now (spread over one interval), once the
            # clients have connected: all run at once, as the figure needs.
            start_in_s = args.start_in_s if args.start_in_s is not None else 5 + args.clients / 400
            start_ns = time.time_ns() + int(start_in_s * 1e9)
            payload = {"n": args.events, "interval_ms": 1000 / args.rate, "start_ns": start_ns}
            jobs = await stack.submit_many("tick", payload, args.clients, progress)
            tally = Tally()
            watches = [ResumingWatch(proxied, job, token, tally=tally) for job, token in jobs]
            deadline = time.monotonic() + args.events / args.rate + 120 + args.clients / 50
            started = time.monotonic()
            _, cpu_before = proc_stats(stack.gateway_pid)
            tasks = [asyncio.create_task(w.run(deadline)) for w in watches]
            expected = args.clients * (args.events + 1)
            await until(
                lambda: all(t.done() for t in tasks),
                deadline - time.monotonic() + 5,
                progress=progress,
                fraction=lambda: tally.events / expected,
                step_s=0.2,
            )
            seconds = time.monotonic() - started
            _, cpu_after = proc_stats(stack.gateway_pid)
        await proxy.stop()
    progress.done()
    last = args.events + 1
    distinct = sum(len(set(w.seqs)) for w in watches)
    resumes = [r for w in watches for r in w.resumes if r.watched_at]
    missed = [r for r in resumes if r.first_missed_at is not None]
    after_watch = [r.first_missed_at - r.watched_at for r in missed if r.first_missed_at]
    after_cut = [r.first_missed_at - r.lost_at for r in missed if r.first_missed_at]
    delays = [r.first_missed_delay_s for r in missed if r.first_missed_delay_s is not None]
    return {
        "clients": args.clients,
        "events_per_job": last,
        "rate_per_s": args.rate,
        "cut_every_s": args.cut_every_s,
        "mode": args.mode,
        "seconds": round(seconds, 1),
        "cuts": proxy.cuts,
        "connections": tally.opened,
        "failed_connects": tally.refused,
        "expected": expected,
        "delivered": distinct,
        "delivered_pct": round(100 * distinct / expected, 4),
        "duplicates": sum(w.duplicates for w in watches),
        "out_of_order": sum(1 for w in watches if w.seqs != sorted(w.seqs)),
        "exact_jobs": sum(1 for w in watches if w.exact(last)),
        "resumes": len(resumes),
        "resumes_that_missed_events": len(missed),
        "watch_to_first_missed_ms": summary_ms(after_watch),
        "cut_to_first_missed_ms": summary_ms(after_cut),
        "missed_event_delay_ms": summary_ms(delays),
        "gateway_cpu_s": round(cpu_after - cpu_before, 1),
        "_samples": {"after_watch": after_watch, "after_cut": after_cut, "delays": delays},
    }


def plot(result: dict[str, Any], path: Path) -> None:
    samples = result["_samples"]
    title = (
        f"{result['clients']} clients, each cut every ~{result['cut_every_s']:g} s "
        f"({result['cuts']} cuts): {result['delivered_pct']:g} % delivered, "
        f"{result['duplicates']} duplicates"
    )
    with chart(path, title, "ms", "fraction of resumes") as ax:
        for name, label in (
            ("after_watch", "watch sent again → first missed event"),
            ("after_cut", "cut → first missed event (back-off included)"),
            ("delays", "missed event: emitted → received"),
        ):
            cdf(ax, (v * 1000 for v in samples[name]), label)
        ax.set_xscale("log")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--events", type=int, default=120)
    parser.add_argument("--rate", type=float, default=2.0, help="events per second per job")
    parser.add_argument("--cut-every-s", type=float, default=15.0)
    parser.add_argument("--mode", default="pubsub", choices=DELIVERY_MODES)
    parser.add_argument(
        "--start-in-s", type=float, help="when the jobs start (default: 5 s + 1 s per 400 clients)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    raise_open_files_limit()
    result = await run(args)
    if args.plot:
        plot(result, args.plot)
    samples = result.pop("_samples")
    for key, value in result.items():
        print(f"{key:28} {value}")
    if args.json:
        args.json.write_text(json.dumps(result | {"samples_n": len(samples["delays"])}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
