"""`python -m service bench`: the A/B benchmark of the delivery modes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from service.bench.params import Params
from service.config import DELIVERY_MODES
from service.logs import redact

PHASES = ("idle", "burst", "steady")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Params()
    parser.add_argument(
        "--modes", default=",".join(DELIVERY_MODES), help="delivery modes, in order"
    )
    parser.add_argument("--phases", default=",".join(PHASES), help="idle,burst,steady")
    parser.add_argument("--redis-url", default=None, help="use this Redis (it is FLUSHED!)")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="on a Redis Cluster: a private local one (3 primaries, a replica each), "
        "or the one --redis-url names a node of",
    )
    parser.add_argument(
        "--gateways", type=int, default=1, help="gateway processes; sockets spread over them"
    )
    parser.add_argument(
        "--transport",
        choices=("ws", "sse"),
        default="ws",
        help="clients watch over WebSocket or Server-Sent Events",
    )
    parser.add_argument(
        "--job-streams",
        type=int,
        default=None,
        help="JOB_STREAMS for the run (default: 1, or 3 on a cluster)",
    )
    parser.add_argument("--out", default="bench-results", help="folder for the JSON and PNG")
    parser.add_argument("--idle-sockets", type=int, default=defaults.idle_sockets)
    parser.add_argument("--idle-seconds", type=float, default=defaults.idle_seconds)
    parser.add_argument("--burst-jobs", type=int, default=defaults.burst_jobs)
    parser.add_argument("--burst-events", type=int, default=defaults.burst_events)
    parser.add_argument("--steady-sockets", type=int, default=defaults.steady_sockets)
    parser.add_argument(
        "--steady-rate",
        type=int,
        default=defaults.steady_rate,
        help="events per second over all sockets",
    )
    parser.add_argument("--steady-seconds", type=int, default=defaults.steady_seconds)
    parser.add_argument(
        "--xread-block-ms",
        type=int,
        default=15_000,
        help="XREAD block in xread mode (the seed's 'before' was 100)",
    )
    parser.add_argument(
        "--xread-count",
        type=int,
        default=20,
        help="XREAD count in xread mode (the seed's 'before' was 10)",
    )


async def run(args: argparse.Namespace, out: Path) -> int:
    from service.bench.ab import Topology, measure
    from service.bench.harness import raise_open_files_limit
    from service.bench.report import shards_table, table, write_chart, write_json

    params = Params(
        idle_sockets=args.idle_sockets,
        idle_seconds=args.idle_seconds,
        burst_jobs=args.burst_jobs,
        burst_events=args.burst_events,
        steady_sockets=args.steady_sockets,
        steady_rate=args.steady_rate,
        steady_seconds=args.steady_seconds,
    )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    phases = {p.strip() for p in args.phases.split(",")}
    if bad := [m for m in modes if m not in DELIVERY_MODES]:
        print(f"bench: unknown mode(s) {', '.join(bad)}", file=sys.stderr)
        return 2
    if args.gateways < 1:
        print("bench: --gateways must be at least 1", file=sys.stderr)
        return 2
    job_streams = args.job_streams or (3 if args.cluster else 1)
    topology = Topology(args.cluster, args.gateways, job_streams, args.transport)
    raise_open_files_limit()
    xread_env = {
        "XREAD_BLOCK_MS": str(args.xread_block_ms),
        "XREAD_COUNT": str(args.xread_count),
        "XREAD_MAX_CONNECTIONS": str(max(10_000, params.idle_sockets + 100)),
    }
    started = time.time()
    results = await measure(
        args.redis_url,
        topology,
        modes,
        phases=phases,
        params=params,
        extra_env=xread_env,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    json_path, chart_path = out / f"bench-{stamp}.json", out / f"bench-{stamp}.png"
    command = "python -m service bench " + " ".join(sys.argv[2:])
    write_json(
        json_path,
        params,
        results,
        {
            "command": command.strip(),
            "topology": asdict(topology),
            "xread": {"block_ms": args.xread_block_ms, "count": args.xread_count},
            "seconds": time.time() - started,
        },
    )
    skipped = write_chart(chart_path, results)
    print(f"{topology.label()}\n")
    print(table(results))
    if args.cluster:
        print(shards_table(results))
    print(f"\nfigures: {json_path}")
    print(f"chart:   {skipped or chart_path}")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401 - the load generator's HTTP client
    except ImportError as e:
        print(
            f"bench: needs the bench extra ({e.name} is missing): from a checkout, "
            "pip install -c constraints.txt -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    if args.redis_url:
        # Said before anything is touched: each mode starts from an empty Redis.
        print(
            f"bench: {redact(args.redis_url)} will be FLUSHED (FLUSHALL) before each mode; "
            "use a Redis that holds nothing you need",
            file=sys.stderr,
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for noisy in ("httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return asyncio.run(run(args, out))
