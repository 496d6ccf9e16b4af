"""The emit path: every event durable in the stream and published, once, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as redis

from service.aio import stop_tasks
from service.codec import ENTRY_FIELD, seq_of_frame
from service.keys import Keys
from service.model import EventKind
from service.publisher import EmitLimits, Emitter, JobFinished, JobLost
from service.redis_client import RedisFactory
from service.scripts import CREATE_JOB, EMIT
from tests.conftest import entries, make_settings, wait_for
from tests.redis_servers import RedisServer

KEYS = Keys()
LIMITS = EmitLimits(max_events=1000, max_event_bytes=1 << 20, max_job_bytes=64 << 20)


class Notifications:
    """A plain PSUBSCRIBE client collecting every notification."""

    def __init__(self, client: redis.Redis) -> None:
        self.frames: list[bytes] = []
        self._client = client
        self._pubsub = client.pubsub()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Notifications:
        await self._pubsub.psubscribe(KEYS.channel_pattern)
        self._task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        async for message in self._pubsub.listen():
            if message["type"] == "pmessage":
                self.frames.append(message["data"])

    async def __aexit__(self, *_exc: object) -> None:
        assert self._task is not None
        await stop_tasks([self._task])  # redis-py may swallow one cancellation
        await self._pubsub.aclose()
        await self._client.aclose()


@contextlib.asynccontextmanager
async def emitter_for(url: str) -> AsyncIterator[Emitter]:
    client = RedisFactory(make_settings(url), "worker").commands()
    emitter = Emitter(client, KEYS, ttl_s=60, limits=LIMITS)
    task = asyncio.create_task(emitter.run())
    try:
        yield emitter
    finally:
        await stop_tasks([task])  # redis-py may swallow one cancellation
        await client.aclose()


async def create_job(client: redis.Redis, job: str) -> None:
    await CREATE_JOB(client, [KEYS.meta(job)], ["count", 0, 60_000])


async def stream_frames(client: redis.Redis, job: str) -> list[bytes]:
    return [fields[ENTRY_FIELD] for _, fields in await entries(client, KEYS.events(job))]


async def test_every_event_is_stored_and_published_in_order(
    redis_server: RedisServer, rclient: redis.Redis
) -> None:
    await create_job(rclient, "job-a")
    await create_job(rclient, "job-b")
    async with (
        Notifications(redis_server.client()) as seen,
        emitter_for(redis_server.url) as emitter,
    ):
        writers = [emitter.writer("job-a", 0), emitter.writer("job-b", 0)]
        for i in range(1, 301):
            for writer in writers:
                await writer.emit(EventKind.DATA, {"i": i})
        for writer in writers:
            await writer.emit(EventKind.DONE, {"count": 300})
            await writer.flushed()
        await wait_for(lambda: len(seen.frames) == 602, what="602 notifications")

    for job in ("job-a", "job-b"):
        stored = await stream_frames(rclient, job)
        published = [f for f in seen.frames if f'"job":"{job}"'.encode() in f]
        assert stored == published
        assert [seq_of_frame(f) for f in stored] == list(range(1, 302))
        events = [orjson.loads(f) for f in stored]
        assert [e["data"]["i"] for e in events[:-1]] == list(range(1, 301))
        assert events[-1] | {"ts": 0} == {
            "seq": 301,
            "job": job,
            "id": "301-0",
            "type": "event",
            "event": "done",
            "ts": 0,
            "data": {"count": 300},
        }
        assert [e["id"] for e in events] == [f"{n}-0" for n in range(1, 302)]
        meta = await rclient.hgetall(KEYS.meta(job))
        assert meta[b"status"] == b"done" and meta[b"seq"] == b"301"
        assert 0 < await rclient.pttl(KEYS.events(job)) <= 60_000


async def test_a_resent_event_is_neither_stored_nor_published_twice(
    redis_server: RedisServer, rclient: redis.Redis
) -> None:
    await create_job(rclient, "j")
    keys = [KEYS.events("j"), KEYS.meta("j"), KEYS.channel("j")]
    args = [*LIMITS.argv("j", 60_000), 1, "data", 5, b'{"i":1}']
    async with Notifications(redis_server.client()) as seen:
        assert await EMIT(rclient, keys, args) == [1, 1, 0]
        # The same command again, as redis-py would re-send it after a lost reply.
        assert await EMIT(rclient, keys, args) == [0, 1, 0]
        gap = [*LIMITS.argv("j", 60_000), 3, "data", 5, b"{}"]
        assert await EMIT(rclient, keys, gap) == [0, 1, 3]
        await wait_for(lambda: seen.frames, what="a notification")
        await rclient.publish(KEYS.channel("marker"), b"end")
        await wait_for(lambda: seen.frames[-1] == b"end", what="the marker")
    assert seen.frames == [
        b'{"seq":1,"job":"j","id":"1-0","type":"event","event":"data","ts":5,"data":{"i":1}}',
        b"end",
    ]
    assert await rclient.xlen(KEYS.events("j")) == 1


async def test_script_cache_flushed_between_calls(
    redis_server: RedisServer, rclient: redis.Redis
) -> None:
    await create_job(rclient, "j")
    async with (
        Notifications(redis_server.client()) as seen,
        emitter_for(redis_server.url) as emitter,
    ):
        writer = emitter.writer("j", 0)
        for i in range(1, 51):
            await writer.emit(EventKind.DATA, {"i": i})
            if i % 10 == 0:
                await writer.flushed()
                await rclient.script_flush()
        await writer.flushed()
        await wait_for(lambda: len(seen.frames) == 50, what="50 notifications")
    assert [seq_of_frame(f) for f in seen.frames] == list(range(1, 51))
    assert await stream_frames(rclient, "j") == seen.frames


async def test_redis_killed_between_calls_loses_and_repeats_nothing(
    durable_redis: RedisServer,
) -> None:
    client = durable_redis.client()
    await create_job(client, "j")
    async with emitter_for(durable_redis.url) as emitter:
        writer = emitter.writer("j", 0)
        for i in range(1, 21):
            await writer.emit(EventKind.DATA, {"i": i})
        await writer.flushed()
        durable_redis.kill()
        # Emitted while Redis is down: kept in order and written once it is back.
        for i in range(21, 41):
            await writer.emit(EventKind.DATA, {"i": i})
        await wait_for(lambda: emitter.failing_since is not None, what="a failed write")
        assert writer.durable_seq == 20
        durable_redis.start()
        await asyncio.wait_for(writer.flushed(), 15)
    await client.aclose()
    client = durable_redis.client()
    frames = await stream_frames(client, "j")
    assert [orjson.loads(f)["data"]["i"] for f in frames] == list(range(1, 41))
    await client.aclose()


async def test_events_for_an_unknown_or_finished_job_are_refused(
    redis_server: RedisServer, rclient: redis.Redis
) -> None:
    await create_job(rclient, "done-job")
    async with emitter_for(redis_server.url) as emitter:
        lost = emitter.writer("never-created", 0)
        await lost.emit(EventKind.DATA, {})
        with pytest.raises(JobLost):
            await lost.flushed()

        finished = emitter.writer("done-job", 0)
        await finished.emit(EventKind.DONE, {})
        await finished.flushed()
        await finished.emit(EventKind.DATA, {})
        with pytest.raises(JobFinished):
            await finished.flushed()
    assert await rclient.exists(KEYS.events("never-created")) == 0
    assert await rclient.xlen(KEYS.events("done-job")) == 1
