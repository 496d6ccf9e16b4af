"""How many events per second one worker process emits, and Redis round trips per event.

Runs a real worker (in this process, so its counters can be read) against a private
redis-server, submits one `count` job and times it from the first event's timestamp to the
last. Usage: python -m benchmarks.emit_throughput [--n 100000] [--size 0] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from service.codec import ENTRY_FIELD
from service.config import Settings
from service.handlers import BUILTIN_HANDLERS
from service.keys import Keys
from service.local_redis import start_redis
from service.migrate import migrate
from service.processes import stop
from service.redis_client import RedisFactory
from service.streams import JobStore
from service.worker import Worker


async def one_run(settings: Settings, n: int, size: int) -> dict[str, Any]:
    keys = Keys(settings.key_prefix)
    client = RedisFactory(settings, "bench").commands()
    await client.flushall()
    await migrate(client, keys, report=lambda _line: None)
    worker = Worker(settings, dict(BUILTIN_HANDLERS), concurrency=1)
    stop_event = asyncio.Event()
    task = asyncio.create_task(worker.run(stop_event))
    store = JobStore(client, keys, result_ttl_s=settings.result_ttl_s)
    started = time.perf_counter()
    job = await store.submit("count", orjson.dumps({"n": n, "size": size}))
    while (await client.hget(keys.meta(job), "status")) != b"done":  # noqa: ASYNC110 - polls Redis
        await asyncio.sleep(0.01)
    wall_s = time.perf_counter() - started
    first: Any = await client.xrange(keys.events(job), count=1)
    last: Any = await client.xrevrange(keys.events(job), count=1)
    first_ts = orjson.loads(first[0][1][ENTRY_FIELD])["ts"]
    last_ts = orjson.loads(last[0][1][ENTRY_FIELD])["ts"]
    emit_s = max(last_ts - first_ts, 1) / 1000
    events = n + 1
    # Every event stored once, in order: ids 1-0 .. (n+1)-0, the frame's seq matching its id.
    exact, cursor, expected = True, "-", 1
    while True:
        page: Any = await client.xrange(keys.events(job), min=cursor, count=10_000)
        for entry_id, fields in page:
            exact &= entry_id == f"{expected}-0".encode()
            exact &= orjson.loads(fields[ENTRY_FIELD])["seq"] == expected
            expected += 1
        if len(page) < 10_000:
            break
        cursor = "(" + page[-1][0].decode()
    exact &= expected == events + 1
    stop_event.set()
    await task
    await client.aclose()
    return {
        "events": events,
        "emit_s": emit_s,
        "events_per_s": events / emit_s,
        "wall_s": wall_s,
        "round_trips_per_event": worker.emitter.round_trips / events,
        "evalsha_per_event": worker.factory.counter.counts["EVALSHA"] / events,
        "exact": exact,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_process, url = start_redis(Path(tmp))
        try:
            settings = Settings.from_env({}, redis_url=url, worker_block_ms=100)
            print(f"count n={args.n} size={args.size}, one worker, concurrency 1")
            print(
                f"{'run':>3} {'events/s':>10} {'emit s':>7} {'wall s':>7} "
                f"{'trips/event':>11} {'EVALSHA/event':>13} {'stored exactly':>14}"
            )
            for run in range(1, args.runs + 1):
                r = await one_run(settings, args.n, args.size)
                print(
                    f"{run:>3} {r['events_per_s']:>10,.0f} {r['emit_s']:>7.2f} "
                    f"{r['wall_s']:>7.2f} {r['round_trips_per_event']:>11.4f} "
                    f"{r['evalsha_per_event']:>13.4f} {'yes' if r['exact'] else 'NO':>14}"
                )
        finally:
            stop(redis_process)


if __name__ == "__main__":
    asyncio.run(main())
