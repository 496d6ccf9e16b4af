"""How many events per second a producer in a plain Python script writes (`service.producer`).

One job, `--n` events emitted in a tight loop and then `done`, timed until `done` returns
(every event durable in the stream and published). The sync `Producer` (as a Celery, RQ or
Dramatiq task uses it) and the `AsyncProducer` (arq, FastAPI), against a private redis-server.

    python -m benchmarks.producer_throughput [--n 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from service.config import Settings
from service.local_redis import start_redis
from service.processes import stop
from service.producer import AsyncProducer, Producer


def sync_run(settings: Settings, n: int) -> tuple[float, float]:
    with Producer(settings=settings) as producer:
        job, _ = producer.create(kind="bench")
        started = time.perf_counter()
        with producer.open(job) as j:
            for i in range(n):
                j.emit({"i": i})
            j.done({"count": n})
        seconds = time.perf_counter() - started
        trips = producer._running()[1]._emitter.round_trips
    return (n + 1) / seconds, trips / (n + 1)


async def async_run(settings: Settings, n: int) -> tuple[float, float]:
    async with AsyncProducer(settings=settings) as producer:
        job, _ = await producer.create(kind="bench")
        started = time.perf_counter()
        async with producer.open(job) as j:
            for i in range(n):
                await j.emit({"i": i})
            await j.done({"count": n})
        seconds = time.perf_counter() - started
        trips = producer._emitter.round_trips
    return (n + 1) / seconds, trips / (n + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_process, url = start_redis(Path(tmp))
        try:
            settings = Settings.from_env({}, redis_url=url, secret_key="bench")
            print(f"one job, {args.n:,} events emitted in a loop, then done (durable)")
            print(f"{'api':<14} {'run':>3} {'events/s':>10} {'round trips/event':>18}")
            for run in range(1, args.runs + 1):
                rate, trips = sync_run(settings, args.n)
                print(f"{'Producer':<14} {run:>3} {rate:>10,.0f} {trips:>18.4f}", flush=True)
            for run in range(1, args.runs + 1):
                rate, trips = asyncio.run(async_run(settings, args.n))
                print(f"{'AsyncProducer':<14} {run:>3} {rate:>10,.0f} {trips:>18.4f}", flush=True)
        finally:
            stop(redis_process)


if __name__ == "__main__":
    main()
