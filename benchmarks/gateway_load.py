"""Gateway load benchmark: throughput, latency, idle cost and catch-up of one gateway process.

Everything real and separate: a private redis-server, the gateway and a worker as child
processes, and this process as the load generator (service/bench/wsload.py). With two cores
or more the gateway runs on a core of its own and everything else on the others (`--no-pin`
to share them), so its CPU per event or per connection is its own.

    python -m benchmarks.gateway_load [--phases throughput,latency,roundrobin,connect,idle,catchup]
                                      [--mode pubsub] [--no-pin]

- throughput: --sockets 1000 sockets spread over --jobs 100 jobs, each emitting --events 500
  events as fast as the worker can; delivered events/s at the clients, and exactness.
- latency: --latency-sockets 1000 sockets, one job each, one event per job every
  --latency-interval-ms 1000 (1,000 events/s; 200 gives 5,000) for --latency-seconds 10;
  emit-to-receipt latency percentiles, over the whole run and over its steady part (every
  job started, none ending: the first and the last interval left out), and beside them the
  gateway's own emit-to-send figures (`resultcast_delivery_latency_seconds`).
- roundrobin: --rr-sockets 1000 sockets, one job each; this process writes one event of every
  job per round (stream entry, meta seq and notification, as raw pipelined commands), job
  after job, --rr-rounds times, at most --rr-window rounds ahead of the clients: delivered
  events/s when no job has more than one watcher.
- connect: --connect-sockets 2000 clients, each opening a socket (upgrade, Origin) and
  watching its own job (token, watch, catch-up) that has one stored event: the gateway's CPU
  per connection from the first upgrade to the last client's event, and connections/s;
  --connect-rounds N repeats it in the same gateway and adds the later rounds' figures.
- idle: --idle-sockets 10000 sockets, one silent job each, for --idle-seconds 30: gateway RSS,
  CPU, Redis commands (INFO commandstats) and Redis connections.
- catchup: with the idle sockets open, one event per watched job is written to the streams
  without being published (what a gateway misses while its subscriber is down), then the
  subscriber connection is killed: time until every socket has its event.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from benchmarks.raw_writer import RawWriter
from service.bench.harness import (
    CommandCount,
    Pinning,
    Stack,
    caught_up,
    close_all,
    connections_named,
    gateway_figures,
    latency_figures,
    private_redis,
    proc_stats,
    raise_open_files_limit,
    running_stack,
    send_latency_buckets,
    send_latency_summary,
    start_after_setup,
    until,
    watch_all,
    watch_all_live,
    write_first_events,
)
from service.bench.wsload import Received, open_sockets
from service.config import DELIVERY_MODES


def in_order(sockets: list[Any], expected: list[int]) -> bool:
    return all(ws.seqs and all(s == expected for s in ws.seqs.values()) for ws in sockets)


async def throughput(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    sink = Received()
    sockets = await open_sockets(stack.base, args.sockets, sink, keep_seqs=True)
    with stack.worker(concurrency=args.jobs + 8):
        await stack.kind_registered("tick")
        jobs = await stack.submit_many("tick", {"n": args.events, "interval_ms": 0}, args.jobs)
        watch_all(sockets, jobs)
        await until(lambda: sink.events >= args.sockets * (args.events + 1), 300)
    span_s = (sink.last_ns - sink.first_ns) / 1e9
    exact = in_order(sockets, list(range(1, args.events + 2)))
    await close_all(sockets)
    return {
        "sockets": args.sockets,
        "jobs": args.jobs,
        "deliveries": sink.events,
        "seconds": span_s,
        "events_per_s": sink.events / span_s,
        "exact": exact,
    }


async def latency(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    sink = Received()
    sockets = await open_sockets(stack.base, args.latency_sockets, sink, keep_seqs=True)
    interval_ms = args.latency_interval_ms
    n = args.latency_seconds * 1000 // interval_ms
    with stack.worker(concurrency=args.latency_sockets + 8):
        await stack.kind_registered("tick")
        # Every job starts once all watches are live, spread over one interval.
        start_ns = start_after_setup(args.latency_sockets)
        payload = {"n": n, "interval_ms": interval_ms, "start_ns": start_ns}
        jobs = await stack.submit_many("tick", payload, args.latency_sockets)
        await watch_all_live(sockets, jobs, sink)
        gateway_before = await send_latency_buckets(stack.base)
        await until(
            lambda: sink.events >= args.latency_sockets * (n + 1), args.latency_seconds + 60
        )
        gateway_after = await send_latency_buckets(stack.base)
    exact = in_order(sockets, list(range(1, n + 2)))
    await close_all(sockets)
    lat = sink.latencies_ns
    # The jobs start within one interval and end within one (1,000 jobs completing in 200 ms
    # keep the worker busy): what lies between is the steady rate.
    first, last, margin = min(sink.emitted_ns), max(sink.emitted_ns), interval_ms * 1_000_000
    steady = [
        latency
        for latency, emitted in zip(lat, sink.emitted_ns, strict=True)
        if first + margin <= emitted <= last - margin
    ]
    return {
        "events": sink.events,
        "rate_per_s": args.latency_sockets * 1000 // interval_ms,
        **latency_figures(lat),
        "steady": {"events": len(steady), **latency_figures(steady)},
        # Emit to the gateway's send (one send in 8): what of the tail is the gateway's.
        "gateway_send": send_latency_summary(gateway_before, gateway_after),
        "emitted_before_watches_were_live": sink.before_live,
        "exact": exact,
    }


async def round_robin(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """One socket per job; each round writes one event of every job, job after job,
    --rr-rounds times, at most --rr-window rounds ahead of what the clients have received."""
    count = args.rr_sockets
    jobs = await stack.submit_many("echo", {}, count)  # no worker: this process writes
    sink = Received()
    sockets = await open_sockets(stack.base, count, sink, keep_seqs=True)
    watch_all(sockets, jobs)
    await until(lambda: sink.frames >= count, 120)
    await caught_up(stack.base)  # the watches' initial catch-ups are done
    writer = await RawWriter.connect(stack.redis_url)

    async def received(events: int) -> None:
        await until(lambda: sink.events >= events, 120, step_s=0.0005)

    names = [job for job, _ in jobs]
    _, cpu_before = proc_stats(stack.gateway_pid)
    started = time.perf_counter()
    for seq in range(1, args.rr_rounds + 1):
        await writer.write_round(names, seq)
        await received((seq - args.rr_window) * count)
    await received(args.rr_rounds * count)
    seconds = time.perf_counter() - started
    _, cpu_after = proc_stats(stack.gateway_pid)
    writer.close()
    exact = in_order(sockets, list(range(1, args.rr_rounds + 1)))
    await close_all(sockets)
    return {
        "sockets": count,
        "rounds": args.rr_rounds,
        "deliveries": args.rr_rounds * count,
        "seconds": round(seconds, 3),
        "events_per_s": round(args.rr_rounds * count / seconds),
        # What the gateway spends per event: steadier than events/s on a machine whose two
        # cores the clients and Redis share with it.
        "gateway_cpu_us_per_event": round(
            (cpu_after - cpu_before) / (args.rr_rounds * count) * 1e6, 1
        ),
        "exact": exact,
    }


async def connect(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """What one connection costs the gateway from its upgrade to its first event, over
    --connect-rounds rounds in the same gateway: the first meets a gateway that has served
    nothing yet, the later ones a warm one (their median is the steadier figure)."""
    count = args.connect_sockets
    jobs = await stack.submit_many("echo", {}, count)  # no worker: this process writes
    await write_first_events(stack.client, [job for job, _ in jobs], "{}", publish=False)
    rounds = [await connect_round(stack, jobs) for _ in range(args.connect_rounds)]
    first, later = rounds[0], rounds[1:]
    figures = {"connections": count, **first}
    if later:
        per_connection = [r["gateway_cpu_us_per_connection"] for r in later]
        figures["later_rounds_us_per_connection"] = per_connection  # in their order
        figures["later_rounds_median_us"] = statistics.median(per_connection)
        figures["exact"] = all(r["exact"] for r in rounds)
    return figures


async def connect_round(stack: Stack, jobs: list[tuple[str, str]]) -> dict[str, Any]:
    """One socket per job opened (in batches, as clients arrive), each watching its job and
    receiving the stored event; closed again once the gateway has released them all."""
    sink = Received()
    _, cpu_before = proc_stats(stack.gateway_pid)
    started = time.perf_counter()
    sockets: list[Any] = []
    for start in range(0, len(jobs), 200):  # as open_sockets does: the accept queue stays short
        batch = await open_sockets(stack.base, min(200, len(jobs) - start), sink, keep_seqs=True)
        watch_all(batch, jobs[start : start + len(batch)])
        sockets += batch
    await until(lambda: sink.events >= len(jobs), 120, step_s=0.0005)
    seconds = time.perf_counter() - started
    _, cpu_after = proc_stats(stack.gateway_pid)
    exact = in_order(sockets, [1])
    await close_all(sockets)
    deadline = time.monotonic() + 60
    while (await gateway_figures(stack.base))["resultcast_sockets_open"] > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway still holds sockets a minute after they closed")
        await asyncio.sleep(0.05)
    return {
        "seconds": round(seconds, 3),
        "connections_per_s": round(len(jobs) / seconds),
        "gateway_cpu_us_per_connection": round((cpu_after - cpu_before) / len(jobs) * 1e6, 1),
        "exact": exact,
    }


async def idle_and_catch_up(
    stack: Stack, args: argparse.Namespace, phases: set[str]
) -> dict[str, Any]:
    count = args.idle_sockets
    jobs = await stack.submit_many("echo", {}, count)  # no worker runs: they stay silent
    watched = Received()
    rss_empty, _ = proc_stats(stack.gateway_pid)
    sockets = await open_sockets(stack.base, count, watched, keep_seqs=True)
    watch_all(sockets, jobs)
    await until(lambda: watched.frames >= count, 120)  # every `watching` frame
    await caught_up(stack.base)  # the watches' initial catch-ups are done
    result: dict[str, Any] = {}
    if "idle" in phases:
        commands = await CommandCount(stack).begin()
        _, cpu_0 = proc_stats(stack.gateway_pid)
        await asyncio.sleep(args.idle_seconds)
        rss_1, cpu_1 = proc_stats(stack.gateway_pid)
        calls = await commands.since()
        result["idle"] = {
            "sockets": count,
            "seconds": args.idle_seconds,
            "gateway_rss_mib": rss_1,
            "rss_kib_per_socket": (rss_1 - rss_empty) * 1024 / count,
            "gateway_cpu_percent": (cpu_1 - cpu_0) / args.idle_seconds * 100,
            "redis_commands": calls,
            "commands_per_socket_hour": calls / count / (args.idle_seconds / 3600),
            "gateway_redis_connections": await connections_named(stack, "resultcast-gateway"),
        }
    if "catchup" in phases:
        await write_first_events(
            stack.client, [job for job, _ in jobs], '{"missed":true}', publish=False
        )
        before = watched.events
        commands = await CommandCount(stack).begin()
        sent_before = (await gateway_figures(stack.base))["resultcast_redis_commands_total"]
        started = time.perf_counter()
        await stack.client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await until(lambda: watched.events - before >= count, 60, step_s=0.001)
        seconds = time.perf_counter() - started
        sent = (await gateway_figures(stack.base))["resultcast_redis_commands_total"] - sent_before
        # Commands Redis executed, less the CLIENT KILL itself: the gateway's, and those its
        # read script runs inside Redis (HMGET + XRANGE a job).
        calls = await commands.since() - 1
        result["catchup"] = {
            "watched_jobs": count,
            "kill_to_all_delivered_s": seconds,
            "gateway_commands_sent_per_job": round(sent / count, 4),
            "redis_commands_executed_per_job": round(calls / count, 4),
            "exact": in_order(sockets, [1]) and watched.events - before == count,
        }
    await close_all(sockets)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description="resultcast gateway load benchmark")
    parser.add_argument("--phases", default="throughput,latency,roundrobin,connect,idle,catchup")
    parser.add_argument("--mode", default="pubsub", choices=DELIVERY_MODES)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--latency-sockets", type=int, default=1000)
    parser.add_argument("--latency-seconds", type=int, default=10)
    parser.add_argument("--latency-interval-ms", type=int, default=1000)
    parser.add_argument("--rr-sockets", type=int, default=1000)
    parser.add_argument("--rr-rounds", type=int, default=300)
    parser.add_argument("--rr-window", type=int, default=20)
    parser.add_argument("--connect-sockets", type=int, default=2000)
    parser.add_argument("--connect-rounds", type=int, default=1)
    parser.add_argument("--idle-sockets", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    raise_open_files_limit()
    pinning = Pinning.split() if args.pin else None
    if pinning is not None:
        pinning.load_side()
    async with private_redis(None) as url, running_stack(url, args.mode) as stack:
        if pinning is not None:
            pinning.server_side(stack.gateway_pid)
        if "throughput" in phases:
            print("throughput", await throughput(stack, args), flush=True)
        if "latency" in phases:
            print("latency", await latency(stack, args), flush=True)
        if "roundrobin" in phases:
            print("roundrobin", await round_robin(stack, args), flush=True)
        if "connect" in phases:
            print("connect", await connect(stack, args), flush=True)
        if phases & {"idle", "catchup"}:
            for name, figures in (await idle_and_catch_up(stack, args, phases)).items():
                print(name, figures, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
