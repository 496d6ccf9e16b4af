"""Job intake spread over JOB_STREAMS streams: every job runs once, every stream is served,
a worker never runs more than its concurrency, and a layout without the streams' groups is
refused with a message that says what to do."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis.asyncio as redis

from service.keys import WORKERS_GROUP, Keys
from service.migrate import MigrationError, migrate, require_layout
from service.streams import JobStore
from tests.conftest import make_settings, wait_for
from tests.processes import running_worker
from tests.redis_servers import RedisServer

STREAMS = 3
KEYS = Keys(job_streams=STREAMS)


async def test_jobs_spread_over_the_streams_all_run_once(
    redis_server: RedisServer, rclient: redis.Redis, tmp_path: Path
) -> None:
    await migrate(rclient, KEYS, report=lambda _: None)
    for stream in KEYS.job_stream_keys:  # every stream has its group
        groups = await rclient.xinfo_groups(stream)
        assert [g["name"] for g in groups] == [WORKERS_GROUP.encode()]
    settings = make_settings(redis_server.url, job_streams=STREAMS)
    store = JobStore(rclient, KEYS, result_ttl_s=60)
    jobs = [await store.submit("sleep", orjson.dumps({"seconds": 0.05})) for _ in range(30)]
    lengths = [await rclient.xlen(stream) for stream in KEYS.job_stream_keys]
    assert sum(lengths) == 30 and min(lengths) > 0, lengths  # spread over every stream

    async with running_worker(settings, concurrency=4) as worker:
        most = 0

        async def all_done() -> bool:
            nonlocal most
            most = max(most, len(worker.running))
            statuses = [await rclient.hget(KEYS.meta(job), "status") for job in jobs]
            return all(status == b"done" for status in statuses)

        await wait_for(all_done, timeout_s=30, interval_s=0.005, what="every job to run")
    assert most <= 4
    for job in jobs:  # once: one data-less `done` event each
        assert await rclient.xlen(KEYS.events(job)) == 1
    for stream in KEYS.job_stream_keys:  # and acknowledged
        assert (await rclient.xpending(stream, WORKERS_GROUP))["pending"] == 0


async def test_more_streams_than_migrated_are_refused_until_migrate_runs(
    rclient: redis.Redis,
) -> None:
    await migrate(rclient, Keys(), report=lambda _: None)
    with pytest.raises(MigrationError, match="JOB_STREAMS grew"):
        await require_layout(rclient, KEYS)
    made: list[str] = []
    await migrate(rclient, KEYS, report=made.append)
    assert sum("created the job stream" in line for line in made) == STREAMS - 1
    await require_layout(rclient, KEYS)
