"""Scale-out benchmark: one Redis with PSUBSCRIBE against a Redis Cluster with SSUBSCRIBE,
with 1 and 2 gateway processes, through `python -m service bench`'s idle and burst phases.

    python -m benchmarks.scaling [--repeats 2] [--out bench-results]

For each topology, per delivered event: the CPU each part spent (gateways, Redis primaries,
replicas) and the bytes the gateways received from Redis; at rest, the Redis commands per
socket-hour; on the cluster, each primary's share of the messages and keys. Everything runs
on one machine, so throughput here is what the machine's cores give all processes together;
the per-event costs are what a capacity model is built from (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from service.bench.ab import ModeResult, Topology, measure
from service.bench.harness import raise_open_files_limit
from service.bench.params import Params

TOPOLOGIES = [
    ("one Redis, PSUBSCRIBE, 1 gateway", Topology(cluster=False, gateways=1)),
    ("one Redis, PSUBSCRIBE, 2 gateways", Topology(cluster=False, gateways=2)),
    ("cluster, SSUBSCRIBE, 1 gateway", Topology(cluster=True, gateways=1, job_streams=3)),
    ("cluster, SSUBSCRIBE, 2 gateways", Topology(cluster=True, gateways=2, job_streams=3)),
]

ROWS = [
    ("idle", "commands_per_socket_hour", "idle: Redis commands per socket-hour", "{:.2f}"),
    ("idle", "redis_connections", "idle: gateway Redis connections", "{:.0f}"),
    ("idle", "rss_kib_per_socket", "idle: gateway RSS per socket (KiB)", "{:.1f}"),
    ("burst", "events_per_s", "burst: delivered events/s (this box)", "{:,.0f}"),
    ("burst", "p50_ms", "burst: latency p50 (ms)", "{:.1f}"),
    ("burst", "p99_ms", "burst: latency p99 (ms)", "{:.1f}"),
    ("burst", "gateway_cpu_us_per_event", "burst: gateways' CPU us / event", "{:.1f}"),
    ("burst", "redis_cpu_us_per_event", "burst: primaries' CPU us / event", "{:.1f}"),
    ("burst", "replica_cpu_us_per_event", "burst: replicas' CPU us / event", "{:.1f}"),
    ("burst", "redis_bytes_in_per_event", "burst: gateway bytes in / event", "{:.0f}"),
    ("burst", "lost", "burst: lost", "{:.0f}"),
    ("burst", "duplicated", "burst: duplicated", "{:.0f}"),
]


def median_of(runs: list[ModeResult], phase: str, key: str) -> float | None:
    values = [float(v) for r in runs if (v := getattr(r, phase).get(key)) is not None]
    return statistics.median(values) if values else None


def matrix(results: dict[str, list[ModeResult]]) -> str:
    names = list(results)
    width = 44
    lines = [f"{'median of runs':<{width}}" + "".join(f"{n:>36}" for n in names)]
    lines.append("-" * len(lines[0]))
    for phase, key, label, fmt in ROWS:
        cells = []
        for name in names:
            value = median_of(results[name], phase, key)
            cells.append(f"{'-' if value is None else fmt.format(value):>36}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    return "\n".join(lines)


def shards(results: dict[str, list[ModeResult]]) -> str:
    lines = ["\nburst, each primary's share of messages (and of keys), per run:"]
    for name, runs in results.items():
        for run in runs:
            parts = run.burst.get("shards") or []
            if len(parts) > 1:
                shares = ", ".join(
                    f"{s['messages_share']:.0%} ({s['keys_share']:.0%})" for s in parts
                )
                lines.append(f"  {name}: {shares}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each topology")
    parser.add_argument("--idle-sockets", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--burst-jobs", type=int, default=200)
    parser.add_argument("--burst-events", type=int, default=200)
    parser.add_argument("--only", default="", help="comma-separated topology numbers (1-4)")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    raise_open_files_limit()
    params = Params(
        idle_sockets=args.idle_sockets,
        idle_seconds=args.idle_seconds,
        burst_jobs=args.burst_jobs,
        burst_events=args.burst_events,
    )
    chosen = {int(n) for n in args.only.split(",") if n} or set(range(1, len(TOPOLOGIES) + 1))
    results: dict[str, list[ModeResult]] = {}
    started = time.time()
    # Topologies alternate within each repeat, so a drift of the machine's speed over the run
    # spreads over all of them instead of favouring the first.
    for _ in range(args.repeats):
        for number, (name, topology) in enumerate(TOPOLOGIES, start=1):
            if number in chosen:
                runs = await measure(
                    None, topology, ["pubsub"], phases={"idle", "burst"}, params=params
                )
                results.setdefault(name, []).extend(runs)
    print(matrix(results))
    print(shards(results))
    figures: dict[str, Any] = {
        "params": vars(args),
        "seconds": time.time() - started,
        "results": {name: [r.figures() for r in runs] for name, runs in results.items()},
    }
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    print(f"\nfigures: {save(Path(args.out) / f'scaling-{stamp}.json', figures)}")


def save(path: Path, figures: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2))
    return path


if __name__ == "__main__":
    asyncio.run(main())
