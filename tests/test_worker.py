"""Workers: run jobs, survive a dead peer, retry up to a limit, stop gracefully."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import orjson
import pytest
import redis.asyncio as redis

from service.codec import ENTRY_FIELD
from service.config import Settings
from service.handlers import BUILTIN_HANDLERS, Job, load_handlers
from service.keys import WORKERS_GROUP, Keys
from service.redis_client import RedisFactory
from service.streams import JobStore
from tests.conftest import entries, make_settings, wait_for
from tests.processes import running_worker, service_process
from tests.redis_servers import RedisServer

KEYS = Keys()


async def submit(settings: Settings, kind: str, payload: dict[str, Any]) -> str:
    client = RedisFactory(settings, "gateway").commands()
    try:
        return await JobStore(client, KEYS, result_ttl_s=settings.result_ttl_s).submit(
            kind, orjson.dumps(payload)
        )
    finally:
        await client.aclose()


async def events(client: redis.Redis, job: str) -> list[dict[str, Any]]:
    return [orjson.loads(f[ENTRY_FIELD]) for _, f in await entries(client, KEYS.events(job))]


async def finished(client: redis.Redis, job: str) -> bool:
    return await client.hget(KEYS.meta(job), "status") in (b"done", b"failed")


async def nothing_pending(client: redis.Redis) -> bool:
    return int((await client.xpending(KEYS.jobs, WORKERS_GROUP))["pending"]) == 0


async def test_builtin_kinds_end_to_end(settings: Settings, migrated: redis.Redis) -> None:
    async with running_worker(settings):
        jobs = {
            "count": await submit(settings, "count", {"n": 5, "size": 3}),
            "echo": await submit(settings, "echo", {"hello": ["world", 1]}),
            "sleep": await submit(settings, "sleep", {"seconds": 0.05}),
            "fail": await submit(settings, "fail", {"message": "nope"}),
        }
        for job in jobs.values():
            await wait_for(lambda job=job: finished(migrated, job), what=f"job {job}")
        await wait_for(lambda: nothing_pending(migrated), what="acks")

    count = await events(migrated, jobs["count"])
    assert [(e["seq"], e["event"], e["data"]) for e in count] == [
        *((i, "data", {"i": i, "pad": "xxx"}) for i in range(1, 6)),
        (6, "done", {"count": 5}),
    ]
    assert [(e["event"], e["data"]) for e in await events(migrated, jobs["echo"])] == [
        ("done", {"hello": ["world", 1]})
    ]
    assert [(e["event"], e["data"]) for e in await events(migrated, jobs["sleep"])] == [
        ("done", {"slept": 0.05})
    ]
    assert [(e["event"], e["data"]) for e in await events(migrated, jobs["fail"])] == [
        ("failed", {"message": "nope"})
    ]
    assert await migrated.hget(KEYS.meta(jobs["fail"]), "status") == b"failed"
    # Result keys expire; the meta hash too.
    assert 0 < await migrated.ttl(KEYS.events(jobs["count"])) <= settings.result_ttl_s
    assert 0 < await migrated.ttl(KEYS.meta(jobs["count"])) <= settings.result_ttl_s


@pytest.mark.logs_errors  # provoked on purpose
async def test_user_handlers_and_handler_errors(settings: Settings, migrated: redis.Redis) -> None:
    handlers = load_handlers("tests.handlers_for_tests:HANDLERS")
    async with running_worker(settings, handlers=handlers):
        shout = await submit(settings, "shout", {"text": "hi"})
        crash = await submit(settings, "crash", {})
        for job in (shout, crash):
            await wait_for(lambda job=job: finished(migrated, job), what=f"job {job}")
    assert [(e["event"], e["data"]) for e in await events(migrated, shout)] == [
        ("data", {"text": "HI"}),
        ("done", {"ok": True}),
    ]
    # The client learns the job failed, not the handler's internals.
    assert [(e["event"], e["data"]) for e in await events(migrated, crash)] == [
        ("failed", {"message": "the job's handler failed (RuntimeError)"})
    ]
    assert set(await migrated.hkeys(KEYS.kinds)) >= {b"shout", b"crash", b"count"}


@pytest.mark.parametrize(
    "spec",
    ["nocolon", "tests.handlers_for_tests:MISSING", "no.such.module:X", "tests.conftest:ROOT"],
)
def test_bad_handler_specs_are_refused_clearly(spec: str) -> None:
    with pytest.raises(ValueError, match="--handlers"):
        load_handlers(spec)


@pytest.mark.slow
async def test_a_job_whose_worker_is_killed_is_finished_by_another(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    env = {"JOB_VISIBILITY_S": "1", "WORKER_BLOCK_MS": "200"}
    settings = make_settings(redis_server.url)
    job = await submit(settings, "count", {"n": 40, "interval_ms": 50})
    with service_process(redis_server.url, "worker", **env) as first:
        await wait_for(lambda: migrated.xlen(KEYS.events(job)), what="the first events")
        await wait_for(lambda: _at_least(migrated, job, 5), what="5 events")
        first.send_signal(signal.SIGKILL)
        first.wait()
    written_by_first = await migrated.xlen(KEYS.events(job))
    assert written_by_first < 41
    with service_process(redis_server.url, "worker", **env):
        await wait_for(lambda: finished(migrated, job), timeout_s=20, what="the job to finish")
        await wait_for(lambda: nothing_pending(migrated), what="the ack")
    got = await events(migrated, job)
    assert [e["data"]["i"] for e in got[:-1]] == list(range(1, 41))
    assert [e["seq"] for e in got] == list(range(1, 42))
    assert (got[-1]["event"], got[-1]["data"]) == ("done", {"count": 40})
    assert await migrated.hget(KEYS.meta(job), "attempts") == b"2"


async def _at_least(client: redis.Redis, job: str, n: int) -> bool:
    return int(await client.xlen(KEYS.events(job))) >= n


async def test_a_job_is_failed_after_too_many_attempts(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    settings = make_settings(redis_server.url, job_max_attempts=2)
    job = await submit(settings, "echo", {})
    # Two earlier attempts that died without a trace but the attempt count.
    await migrated.hset(KEYS.meta(job), "attempts", 2)
    async with running_worker(settings):
        await wait_for(lambda: finished(migrated, job), what="the job to be failed")
    assert [(e["event"], e["data"]) for e in await events(migrated, job)] == [
        ("failed", {"message": "job failed after 2 attempts (its workers stopped or died)"})
    ]


async def test_stopping_hands_running_jobs_back_at_once(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    # A visibility timeout far longer than the test: only a hand-back lets another worker run it.
    settings = make_settings(redis_server.url, job_visibility_s=600.0, worker_stop_grace_s=0.2)
    started = asyncio.Event()

    async def slow_count(job: Job) -> Any:
        started.set()
        return await BUILTIN_HANDLERS["count"](job)

    handlers = {**BUILTIN_HANDLERS, "count": slow_count}
    job = await submit(settings, "count", {"n": 30, "interval_ms": 50})
    async with running_worker(settings, handlers=handlers):
        await asyncio.wait_for(started.wait(), 10)
        await wait_for(lambda: _at_least(migrated, job, 3), what="3 events")
    assert not await finished(migrated, job)
    assert await migrated.hget(KEYS.meta(job), "attempts") == b"0"
    async with running_worker(settings):
        await wait_for(lambda: finished(migrated, job), timeout_s=20, what="the job to finish")
    got = await events(migrated, job)
    assert [e["seq"] for e in got] == list(range(1, 32))
    assert [e["data"]["i"] for e in got[:-1]] == list(range(1, 31))


@pytest.mark.slow
async def test_a_worker_that_cannot_write_stops_taking_jobs_and_loses_nothing(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    from tests.tcp_proxy import tcp_proxy

    async with tcp_proxy(redis_server.port) as proxy:
        settings = make_settings(
            proxy.url,
            worker_pause_after_s=0.5,
            redis_socket_timeout_s=0.5,
            redis_connect_timeout_s=0.5,
        )
        first = await submit(make_settings(redis_server.url), "count", {"n": 30, "interval_ms": 50})
        async with running_worker(settings) as worker:
            await wait_for(lambda: _at_least(migrated, first, 3), what="the first events")
            proxy.freeze(new_ones_too=True)  # Redis unreachable for this worker
            await wait_for(lambda: worker.intake_paused, what="the worker to stop taking jobs")
            second = await submit(make_settings(redis_server.url), "count", {"n": 5})
            pending: Any = await migrated.xpending(KEYS.jobs, WORKERS_GROUP)
            assert int(pending["pending"]) == 1  # only the first job was taken
            proxy.thaw()
            await wait_for(lambda: finished(migrated, first), timeout_s=30, what="the first job")
            await wait_for(lambda: finished(migrated, second), timeout_s=30, what="the second job")
            assert not worker.intake_paused
    got = await events(migrated, first)
    assert [e["seq"] for e in got] == list(range(1, 32))
    assert [e["data"]["i"] for e in got[:-1]] == list(range(1, 31))
    assert [e["seq"] for e in await events(migrated, second)] == list(range(1, 7))


@pytest.mark.logs_errors  # the refused XACK is logged at ERROR, on purpose
async def test_an_ack_refused_for_good_frees_the_slot(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    """A Redis user that may not XACK: the finished job stays pending, one ERROR says why, and
    the worker's only slot is free for the next job (it used to retry for ever, holding it)."""
    rules = ["on", ">no-ack-pw", "~*", "&*", "+@all", "-xack"]
    await migrated.execute_command("ACL", "SETUSER", "noack", *rules)
    url = f"redis://noack:no-ack-pw@127.0.0.1:{redis_server.port}/0"
    settings = make_settings(url)
    async with running_worker(settings, concurrency=1):
        first = await submit(settings, "echo", {"n": 1})
        await wait_for(lambda: finished(migrated, first), what="the first job")
        second = await submit(settings, "echo", {"n": 2})
        await wait_for(lambda: finished(migrated, second), what="the second job, in the slot")
    assert int((await migrated.xpending(KEYS.jobs, WORKERS_GROUP))["pending"]) == 2
