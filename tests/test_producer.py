"""The producer API (`service.producer`) against a real Redis and a real gateway: the events a
producer writes are those a worker writes, delivered with the same guarantees; retries go on
without duplicates; misuse and a Redis outage are told to the caller, never dropped silently.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from typing import Any

import orjson
import pytest
import redis.asyncio as redis

from service.codec import ENTRY_FIELD
from service.config import ConfigError, Settings
from service.keys import Keys
from service.producer import (
    AsyncProducer,
    JobBusy,
    JobFinished,
    JobLost,
    NotWritten,
    Producer,
    RedisUnreachable,
    TooManyEvents,
)
from tests.conftest import ROOT, entries, make_settings
from tests.processes import running_gateway
from tests.redis_servers import RedisServer, free_port
from tests.ws_client import assert_exact, connect

KEYS = Keys()


async def stored(client: redis.Redis, job: str) -> list[dict[str, Any]]:
    return [orjson.loads(f[ENTRY_FIELD]) for _, f in await entries(client, KEYS.events(job))]


async def test_a_producer_job_is_watched_like_any_other(
    settings: Settings, migrated: redis.Redis
) -> None:
    async with AsyncProducer(settings=settings) as producer, running_gateway(settings) as base:
        job, token = await producer.create(kind="report")
        async with connect(base) as ws:
            await ws.watch(job, token)
            async with producer.open(job) as j:
                assert (j.resumed_after, j.attempt, j.finished) == (0, 1, False)
                for i in range(1, 51):
                    await j.emit({"i": i})
                await j.done({"count": 50})
            frames = (await ws.events_until_terminal({job}))[job]
    assert_exact(frames[1:], job, 50)
    assert frames[-1]["data"] == {"count": 50}
    assert await stored(migrated, job) == frames[1:]
    assert await migrated.hget(KEYS.meta(job), "status") == b"done"
    assert not await migrated.exists(KEYS.writer(job)), "the writer's lease is released"


async def test_a_retried_task_goes_on_after_what_the_first_attempt_wrote(
    settings: Settings, migrated: redis.Redis
) -> None:
    async with AsyncProducer(settings=settings) as producer:
        job, _ = await producer.create()
        with pytest.raises(RuntimeError, match="attempt 1 broke"):
            async with producer.open(job) as j:
                for i in range(1, 8):
                    await j.emit({"i": i})
                raise RuntimeError("attempt 1 broke")
        async with producer.open(job) as j:
            assert (j.resumed_after, j.attempt) == (7, 2)
            for i in range(j.resumed_after + 1, 21):
                await j.emit({"i": i})
            await j.done({"count": 20})
        async with producer.open(job) as j:  # a third run, after the end: nothing to do
            assert j.finished and j.resumed_after == 21
            with pytest.raises(JobFinished):
                await j.emit({"i": 22})
    frames = await stored(migrated, job)
    assert_exact(frames, job, 20)
    assert [f["data"]["i"] for f in frames[:-1]] == list(range(1, 21))


async def test_misuse_is_refused_with_a_clear_error(
    settings: Settings, migrated: redis.Redis
) -> None:
    async with AsyncProducer(settings=settings) as producer:
        with pytest.raises(JobLost, match="unknown"):
            async with producer.open("no-such-job"):
                pass
        job, _ = await producer.create()
        async with producer.open(job) as j:
            await j.emit({"i": 1})
            with pytest.raises(TypeError, match="not JSON-serialisable"):
                await j.emit({"when": object()})
            await j.fail("gave up", step=1)
            with pytest.raises(JobFinished):
                await j.emit({"i": 2})
            with pytest.raises(JobFinished):
                await j.done()
    frames = await stored(migrated, job)
    assert [(f["seq"], f["event"]) for f in frames] == [(1, "data"), (2, "failed")]
    assert frames[-1]["data"] == {"message": "gave up", "step": 1}


async def test_a_job_over_its_event_limit_can_still_be_failed(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    settings = make_settings(redis_server.url, max_events_per_job=5)
    async with AsyncProducer(settings=settings) as producer:
        job, _ = await producer.create()
        async with producer.open(job) as j:
            with pytest.raises(TooManyEvents):
                for i in range(1, 100):
                    await j.emit({"i": i})
                await j.flush()
            await j.fail("too many events")
    frames = await stored(migrated, job)
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5, 6]
    assert frames[-1]["event"] == "failed"


async def test_two_writers_of_one_job_are_serialised_never_interleaved(
    settings: Settings, migrated: redis.Redis
) -> None:
    async with AsyncProducer(settings=settings) as first, AsyncProducer(settings=settings) as other:
        job, _ = await first.create()
        async with first.open(job) as j:
            await j.emit({"by": "first"})
            with pytest.raises(JobBusy):
                async with other.open(job, wait_s=0.3):
                    pass
            # A second writer that waits gets the job once the first has closed it.
            waiting = asyncio.create_task(_write_from(other, job, wait_s=10))
            await asyncio.sleep(0)
            for _ in range(20):
                await j.emit({"by": "first"})
        await waiting
    frames = await stored(migrated, job)
    assert [f["seq"] for f in frames] == list(range(1, 24))
    assert [f["data"]["by"] for f in frames[:-1]] == ["first"] * 21 + ["other"]


async def _write_from(producer: AsyncProducer, job: str, *, wait_s: float) -> None:
    async with producer.open(job, wait_s=wait_s) as j:
        assert j.resumed_after == 21
        await j.emit({"by": "other"})
        await j.done()


async def test_events_emitted_while_redis_is_down_are_kept_and_written_in_order(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    settings = make_settings(redis_server.url, redis_socket_timeout_s=0.5)
    async with AsyncProducer(settings=settings) as producer:
        job, _ = await producer.create()
        async with producer.open(job) as j:
            await j.emit({"i": 1})
            await j.flush()
            assert redis_server.process is not None
            redis_server.process.send_signal(signal.SIGSTOP)
            try:
                for i in range(2, 11):
                    await j.emit({"i": i})
                with pytest.raises(NotWritten, match="not written"):
                    await j.flush(timeout_s=1.0)
            finally:
                redis_server.process.send_signal(signal.SIGCONT)
            for i in range(11, 21):
                await j.emit({"i": i})
            await j.done({"count": 20})
    assert_exact(await stored(migrated, job), job, 20)


def test_the_sync_producer_from_threads(settings: Settings, redis_server: RedisServer) -> None:
    """Synchronous code (a Celery or RQ task), several threads at once, one job each."""
    with Producer(settings=settings) as producer:
        jobs = [producer.create(kind="sync") for _ in range(4)]
        errors: list[BaseException] = []

        def task(job: str) -> None:
            try:
                with producer.open(job) as j:
                    for i in range(1, 2001):
                        j.emit({"i": i})
                    j.done({"count": 2000})
                    with pytest.raises(JobFinished):
                        j.emit({"i": 2001})
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=task, args=(job,)) for job, _ in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors

    async def check() -> None:
        client = redis_server.client()
        try:
            for job, _ in jobs:
                assert_exact(await stored(client, job), job, 2000)
        finally:
            await client.aclose()

    asyncio.run(check())


def test_the_sync_producer_tells_the_caller_of_what_it_cannot_write(
    settings: Settings, redis_server: RedisServer
) -> None:
    with Producer(settings=settings) as producer:
        job, token = producer.create()
        assert token == producer.token(job)
        with pytest.raises(JobLost), producer.open("no-such-job"):
            pass
        with producer.open(job) as j:
            with pytest.raises(TypeError):
                j.emit({"bad": {1, 2}})
            j.emit({"i": 1})
            j.done()
            with pytest.raises(JobFinished):
                j.done()


def test_the_producer_needs_only_redis_and_orjson() -> None:
    """Importing it pulls in none of the gateway's packages (a Celery worker has none)."""
    code = (
        "import sys, service.producer; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'starlette', 'uvicorn', 'prometheus_client', 'httpx', 'websockets', 'anyio'}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert found.stdout.strip() == "[]", found.stdout


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_producer_without_a_key_says_where_the_dev_stack_keeps_it(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(ConfigError) as refused:
        Producer() if kind == "sync" else AsyncProducer()
    message = str(refused.value)
    assert message.startswith("SECRET_KEY: required"), message
    assert ".data/dev-secret-key" in message and "REDIS_URL" in message, message


async def test_an_unreachable_redis_is_the_producers_own_retryable_error() -> None:
    """Not a redis-py ConnectionError from deep inside: one error the task can act on, naming
    the address with its password masked, that says whether retrying may help."""
    url = f"redis://app:s3cret@127.0.0.1:{free_port()}/0"
    async with AsyncProducer(redis_url=url, secret_key="k") as producer:
        with pytest.raises(RedisUnreachable) as refused:
            await producer.create()
        with pytest.raises(RedisUnreachable):
            async with producer.open("AAAAAAAAAAAAAAAAAAAAAA"):
                pass
    message = str(refused.value)
    assert message.startswith("creating a job: cannot reach Redis at redis://app:***@127.0.0.1:")
    assert "s3cret" not in message
    assert refused.value.retryable and NotWritten.retryable and JobBusy.retryable
    assert not JobFinished.retryable and not JobLost.retryable and not TooManyEvents.retryable
