"""Slow readers and large events: flow control, measured on real processes.

    python -m benchmarks.slow_readers [--scenarios rate,tenth,replay,crowd] [--mode pubsub]
                                      [--plot docs/slow-reader-rss.png] [--json out.json]

- rate: one `count` job of --rate-mb MB (2 KB events, written as fast as a worker can), one
  client reading at --rate-mbps MB/s and one reading as fast as it can, on one gateway with
  the contract's defaults. Each must get every event once, in order, on one connection; the
  gateway's RSS is sampled throughout (growth over its idle baseline).
- tenth: a job writing --tenth-events events of 10 KB, 1 ms apart, and a client reading at a
  tenth of the job's write rate (as the fast client measures it): the same checks, and RSS
  over time (the plot).
- replay: finished jobs of 1,000 events of 10 KB and of 20 KB, replayed to a client that
  arrives after they finished.
- crowd: a fast reader of a 4,001-event job (2 KB events, --crowd-interval-ms apart), alone
  and beside --crowd sockets that watch the same job and never read; its time to the last
  event in both cases.

Clients are the lean load client (service/bench/wsload.py); a slow one is throttled at the
socket (it stops reading from its transport when ahead of its rate), as a slow link is.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.bench.harness import (
    Stack,
    private_redis,
    proc_stats,
    raise_open_files_limit,
    running_stack,
    until,
)
from service.bench.wsload import Received, WsProtocol, open_sockets
from service.config import DELIVERY_MODES

MB = 1_000_000
KiB = 1024


class Throttle:
    """Stops reading a socket's transport while the client is ahead of its rate (bytes/s).

    `rate` may be a function, asked again as bytes arrive: a reader that keeps pace with a
    fraction of what another socket receives.
    """

    def __init__(self, ws: WsProtocol, rate: float | Callable[[], float]) -> None:
        self.ws = ws
        self.rate = rate if callable(rate) else (lambda: rate)
        self.taken = 0
        self.start = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._paused = False
        received = ws.data_received

        def counting(data: bytes) -> None:
            received(data)
            self.taken += len(data)
            ahead_s = self.start + self.taken / max(1.0, self.rate()) - time.monotonic()
            if ahead_s > 0 and not self._paused and ws.transport is not None:
                self._paused = True
                ws.transport.pause_reading()
                self._loop.call_later(min(ahead_s, 0.5), self._resume)

        ws.data_received = counting  # type: ignore[method-assign]

    @property
    def bytes_per_s(self) -> float:
        return self.taken / max(1e-3, time.monotonic() - self.start)

    def _resume(self) -> None:
        self._paused = False
        if self.ws.transport is not None and not self.ws.transport.is_closing():
            self.ws.transport.resume_reading()


@dataclass
class RssSampler:
    """The gateway's RSS every `every_s`, as (seconds since start, MiB)."""

    pid: int
    every_s: float = 0.25
    samples: list[tuple[float, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        start = time.monotonic()
        while True:
            self.samples.append((time.monotonic() - start, proc_stats(self.pid)[0]))
            await asyncio.sleep(self.every_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def peak(self) -> float:
        return max(rss for _, rss in self.samples)


def exactness(ws: WsProtocol, job: str, n_events: int) -> dict[str, int]:
    seqs = ws.seqs.get(job, [])
    expected = list(range(1, n_events + 1))
    return {
        "received": len(seqs),
        "expected": n_events,
        "duplicated": len(seqs) - len(set(seqs)),
        "lost": len(set(expected) - set(seqs)),
        "out_of_order": sum(1 for a, b in itertools.pairwise(seqs) if b <= a),
    }


async def all_events(sink: Received, n_events: int, timeout_s: float) -> None:
    """Until `sink` has `n_events` (or a close frame ended its socket)."""
    await until(lambda: sink.events >= n_events or bool(sink.close_codes), timeout_s)


async def timed_reader(
    stack: Stack, job: tuple[str, str], n_events: int, timeout_s: float
) -> dict[str, Any]:
    """A new client watches `job` and takes it all: what it got, how long it took."""
    sink = Received()
    ws = await one_socket(stack, sink)
    started = time.monotonic()
    await watch(ws, job)
    await all_events(sink, n_events, timeout_s)
    figures = {
        **exactness(ws, job[0], n_events),
        "seconds": round(time.monotonic() - started, 3),
        "closes": sink.close_codes,
    }
    if ws.transport is not None:
        ws.transport.abort()
    return figures


async def one_socket(stack: Stack, sink: Received) -> WsProtocol:
    return (await open_sockets(stack.base, 1, sink, keep_seqs=True))[0]


async def watch(ws: WsProtocol, job: tuple[str, str]) -> None:
    ws.send({"op": "watch", "job": job[0], "token": job[1]})


async def slow_and_fast(
    stack: Stack, payload: dict[str, Any], n_events: int, rate: float | None, timeout_s: float
) -> dict[str, Any]:
    """A throttled client and a fast one watch one job; RSS sampled until both have all.

    The slow client reads at `rate` bytes/s, or (None) at a tenth of the fast one's pace
    while the job writes, which is the job's write rate.
    """
    slow_sink, fast_sink = Received(), Received()
    slow, fast = await one_socket(stack, slow_sink), await one_socket(stack, fast_sink)
    fast_meter = Throttle(fast, float("inf"))
    write_rate: list[float] = []

    def tenth_of_the_write_rate() -> float:
        if fast_sink.events < n_events:
            write_rate[:] = [fast_meter.bytes_per_s]
        return write_rate[0] / 10 if write_rate else 1e6

    slow_meter = Throttle(slow, rate if rate is not None else tenth_of_the_write_rate)
    sampler = RssSampler(stack.gateway_pid)
    sampler.start()
    sampling_since = time.monotonic()
    await asyncio.sleep(1.0)  # the idle baseline, before any job runs
    baseline = sampler.peak
    with stack.worker(concurrency=2):
        (job,) = await stack.submit_many("count", payload, 1)
        started = time.monotonic()
        await watch(slow, job)
        await watch(fast, job)
        done_at: dict[str, float] = {}

        def finished() -> bool:
            for name, sink in (("slow", slow_sink), ("fast", fast_sink)):
                if name not in done_at and sink.events >= n_events:
                    done_at[name] = time.monotonic() - started
            return len(done_at) == 2

        await until(finished, timeout_s)
    await sampler.stop()
    result = {
        "gateway_rss_baseline_mib": round(baseline, 1),
        "gateway_rss_peak_mib": round(sampler.peak, 1),
        "gateway_rss_growth_mib": round(sampler.peak - baseline, 1),
        "rss_samples": [(round(t, 2), round(m, 1)) for t, m in sampler.samples],
        # When the job was all written (the fast client had it), on the samples' clock.
        "written_at_s": round(started - sampling_since + done_at["fast"], 2),
    }
    meters = (("slow", slow, slow_sink, slow_meter), ("fast", fast, fast_sink, fast_meter))
    for name, ws, sink, meter in meters:
        result[name] = {
            **exactness(ws, job[0], n_events),
            "seconds": round(done_at[name], 2),
            "closes": sink.close_codes,
            "mb_per_s": round(meter.taken / done_at[name] / MB, 2),
        }
    for ws in (slow, fast):
        if ws.transport is not None:
            ws.transport.close()
    return result


async def rate(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    size = 2000
    n = int(args.rate_mb * MB / size)
    payload = {"n": n, "size": size}
    result = await slow_and_fast(stack, payload, n + 1, args.rate_mbps * MB, 600)
    return {"job_mb": round(n * size / MB, 1), "reader_mb_per_s": args.rate_mbps, **result}


async def tenth(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    size, interval_ms, n = 10_000, 1, args.tenth_events
    payload = {"n": n, "size": size, "interval_ms": interval_ms}
    result = await slow_and_fast(stack, payload, n + 1, None, 900)
    return {
        "job_mb": round(n * size / MB, 1),
        "job_write_mb_per_s": result["fast"]["mb_per_s"],
        "reader_share_of_write_rate": round(
            result["slow"]["mb_per_s"] / result["fast"]["mb_per_s"], 3
        ),
        **result,
    }


async def replay(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    with stack.worker(concurrency=2):
        for size in (10_000, 20_000):
            (job,) = await stack.submit_many("count", {"n": 1000, "size": size}, 1)
            first_sink = Received()
            first = await one_socket(stack, first_sink)
            await watch(first, job)
            await all_events(first_sink, 1001, 120)  # the job has finished
            if first.transport is not None:
                first.transport.close()
            results[f"{size // 1000}kb"] = await timed_reader(stack, job, 1001, 120)
    return results


async def crowd(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with stack.worker(concurrency=2):
        for stuck_count in (0, args.crowd):
            stuck_sink = Received()
            stuck = await open_sockets(
                stack.base, stuck_count, stuck_sink, receive_buffer_bytes=4096
            )
            for ws in stuck:
                assert ws.transport is not None
                ws.transport.pause_reading()
            (job,) = await stack.submit_many(
                "count", {"n": 4000, "size": 2000, "interval_ms": args.crowd_interval_ms}, 1
            )
            for ws in stuck:
                await watch(ws, job)
            results[f"non_readers_{stuck_count}"] = {
                **await timed_reader(stack, job, 4001, 300),
                "gateway_rss_mib": round(proc_stats(stack.gateway_pid)[0], 1),
            }
            for ws in stuck:
                if ws.transport is not None:
                    ws.transport.abort()
    return results


SCENARIOS = {"rate": rate, "tenth": tenth, "replay": replay, "crowd": crowd}
# The crowd's stuck sockets each hold up to MAX_SEND_QUEUE_BYTES in the gateway, and the
# kernel's send buffer: both bounded, so that a thousand of them fit on the machine.
CROWD_ENV = {"MAX_SEND_QUEUE_BYTES": str(256 * KiB), "SOCKET_SEND_BUFFER_BYTES": str(64 * KiB)}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, label in (("tenth", "reader at 10 % of the write rate"), ("rate", "4 MB/s reader")):
        if name in result:
            samples = result[name]["rss_samples"]
            (line,) = ax.plot([t for t, _ in samples], [m for _, m in samples], label=label)
            ax.axvline(result[name]["written_at_s"], color=line.get_color(), linestyle=":")
    ax.set_xlabel("seconds since the clients connected")
    ax.set_ylabel("gateway RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Gateway memory while a slow client reads a long job (dotted: job written)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_files_limit()
    results: dict[str, Any] = {"mode": args.mode}
    async with private_redis(args.redis_url) as url:
        for name in args.scenarios.split(","):
            env = CROWD_ENV if name == "crowd" else {}
            async with running_stack(url, args.mode, env) as stack:
                print(f"-- {name}", flush=True)
                results[name] = await SCENARIOS[name](stack, args)
                shown = {k: v for k, v in results[name].items() if k != "rss_samples"}
                print(json.dumps(shown, indent=1), flush=True)
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="rate,tenth,replay,crowd")
    parser.add_argument("--mode", default="pubsub", choices=DELIVERY_MODES)
    parser.add_argument("--redis-url", default=None, help="default: a private redis-server")
    parser.add_argument("--rate-mb", type=float, default=60.0, help="size of the rate job (MB)")
    parser.add_argument("--rate-mbps", type=float, default=4.0, help="the slow reader's MB/s")
    parser.add_argument("--tenth-events", type=int, default=3000, help="the tenth job's events")
    parser.add_argument("--crowd", type=int, default=1000, help="non-reading sockets")
    parser.add_argument(
        "--crowd-interval-ms", type=int, default=1, help="the crowd job's pace (0: flat out)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="PNG of RSS over time")
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    figures = asyncio.run(main(arguments))
    if arguments.plot:
        plot(figures, arguments.plot)
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=1))
