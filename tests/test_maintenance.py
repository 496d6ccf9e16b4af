"""Stream maintenance: done by exactly one lease holder, taken over when it dies."""

from __future__ import annotations

import signal

import redis.asyncio as redis

from service.config import Settings
from service.keys import WORKERS_GROUP, Keys
from service.maintenance import trim_acknowledged
from tests.conftest import entries, make_settings, wait_for
from tests.processes import running_worker, service_process
from tests.redis_servers import RedisServer
from tests.test_worker import finished, submit

KEYS = Keys()


async def test_trims_only_what_every_group_acknowledged(migrated: redis.Redis) -> None:
    ids = [await migrated.xadd(KEYS.jobs, {"job": str(i)}) for i in range(6)]
    await migrated.xgroup_create(KEYS.jobs, "audit", id="0")
    # `workers` takes and acknowledges four; `audit` takes three and acknowledges two.
    await migrated.xreadgroup(WORKERS_GROUP, "w", {KEYS.jobs: ">"}, count=4)
    await migrated.xack(KEYS.jobs, WORKERS_GROUP, *ids[:4])
    await migrated.xreadgroup("audit", "a", {KEYS.jobs: ">"}, count=3)
    await migrated.xack(KEYS.jobs, "audit", *ids[:2])
    assert await trim_acknowledged(migrated, KEYS.jobs) == 2
    assert [i for i, _ in await entries(migrated, KEYS.jobs)] == ids[2:]
    await migrated.xack(KEYS.jobs, "audit", ids[2])
    await migrated.xreadgroup("audit", "a", {KEYS.jobs: ">"})
    await migrated.xack(KEYS.jobs, "audit", *ids[3:])
    assert await trim_acknowledged(migrated, KEYS.jobs) == 2
    assert [i for i, _ in await entries(migrated, KEYS.jobs)] == ids[4:]


async def test_a_worker_trims_finished_jobs(settings: Settings, migrated: redis.Redis) -> None:
    jobs = [await submit(settings, "echo", {"i": i}) for i in range(5)]
    async with running_worker(settings):
        for job in jobs:
            await wait_for(lambda job=job: finished(migrated, job), what="jobs to finish")
        await wait_for(lambda: _stream_empty(migrated), what="the jobs stream to be trimmed")
    holder = await migrated.get(KEYS.maintenance_lease)
    assert holder is None  # released on a clean stop


async def _stream_empty(client: redis.Redis) -> bool:
    return int(await client.xlen(KEYS.jobs)) == 0


def _pid_of(holder: bytes | str) -> int:
    text = holder.decode() if isinstance(holder, bytes) else holder
    consumer = text.split("/", 1)[0]
    return int(consumer.rsplit("-", 2)[1])


async def test_the_lease_moves_when_its_holder_dies(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    env = {"MAINTENANCE_LEASE_S": "1", "MAINTENANCE_INTERVAL_S": "0.3", "WORKER_BLOCK_MS": "200"}
    with (
        service_process(redis_server.url, "worker", **env) as first,
        service_process(redis_server.url, "worker", **env) as second,
    ):
        by_pid = {first.pid: first, second.pid: second}
        holder = await wait_for(lambda: migrated.get(KEYS.maintenance_lease), what="a holder")
        holder_pid = _pid_of(holder)
        assert holder_pid in by_pid
        survivor = next(pid for pid in by_pid if pid != holder_pid)
        by_pid[holder_pid].send_signal(signal.SIGKILL)
        by_pid[holder_pid].wait()

        async def taken_over() -> bool:
            value = await migrated.get(KEYS.maintenance_lease)
            return value is not None and _pid_of(value) == survivor

        await wait_for(taken_over, timeout_s=10, what="the survivor to take the lease")
        # And it does the work: a finished job's intake entry is trimmed by the survivor.
        job = await submit(make_settings(redis_server.url), "echo", {})
        await wait_for(lambda: finished(migrated, job), what="a job on the survivor")
        await wait_for(lambda: _stream_empty(migrated), what="the survivor to trim")
