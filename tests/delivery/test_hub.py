"""The hub's flow control, step by step: real Redis, the real outbox, a client we pace.

The live source is the in-memory one (the test pushes each frame the emit script wrote), and
the client is an in-memory queue of bounded size that the outbox sends into, so each test
decides exactly when the client reads and the order in which things happen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as redis

from service.codec import ENTRY_FIELD, seq_of_frame
from service.delivery.hub import Hub
from service.delivery.memory import MemorySource
from service.keys import Keys
from service.publisher import EmitLimits
from service.scripts import CREATE_JOB, EMIT
from service.stats import GatewayStats
from service.streams import EventReader, Page, PageRequest
from tests.conftest import wait_for
from tests.delivery.clients import Client, Watcher

KEYS = Keys()
TTL_MS = 60_000
LIMITS = EmitLimits(max_events=1_000_000, max_event_bytes=1 << 20, max_job_bytes=64 << 20)


class GatedReader(EventReader):
    """The real reader, whose answers the test can hold back while it does other things."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client, KEYS)
        self.gate = asyncio.Event()
        self.gate.set()
        self.reading = asyncio.Event()
        self.calls = 0

    async def pages(
        self, requests: list[PageRequest], count: int, checks: Any = None
    ) -> list[Page]:
        self.calls += 1
        pages = await super().pages(requests, count, checks)
        self.reading.set()
        await self.gate.wait()
        return pages


class Job:
    """A job written with the real emit script, its frames pushed through the live source."""

    def __init__(self, client: redis.Redis, hub: Hub, name: str, size: int) -> None:
        self.client, self.name, self.size = client, name, size
        source = hub._source
        assert isinstance(source, MemorySource)
        self.source = source
        self.seq = 0

    async def create(self) -> Job:
        await CREATE_JOB(self.client, [KEYS.meta(self.name)], ["count", 0, TTL_MS])
        return self

    async def emit(self, n: int, *, publish: bool = True, done: bool = False) -> None:
        args: list[Any] = LIMITS.argv(self.name, TTL_MS)
        first = self.seq + 1
        for i in range(n):
            self.seq += 1
            kind = "done" if done and i == n - 1 else "data"
            data = orjson.dumps({"i": self.seq, "pad": "x" * self.size}).decode()
            args += [self.seq, kind, time.time_ns() // 1_000_000, data]
        keys = [KEYS.events(self.name), KEYS.meta(self.name), KEYS.channel(self.name)]
        await EMIT(self.client, keys, args)
        if publish:
            entries: Any = await self.client.xrange(KEYS.events(self.name), f"{first}-0", "+")
            for _, fields in entries:
                self.source.push(self.name, fields[ENTRY_FIELD])


@pytest.fixture
async def hub(migrated: redis.Redis) -> AsyncIterator[Hub]:
    hub = Hub(GatedReader(migrated), GatewayStats(), MemorySource(), page_size=500)
    await hub.start()
    yield hub
    await hub.stop()


def reader_of(hub: Hub) -> GatedReader:
    reader = hub._reader
    assert isinstance(reader, GatedReader)
    return reader


async def test_a_replay_through_a_tiny_queue_arrives_whole(hub: Hub, migrated: redis.Redis) -> None:
    job = await Job(migrated, hub, "replay", 1000).create()
    await job.emit(200, publish=False)
    await job.emit(1, publish=False, done=True)
    client = Client(window=2)
    watcher = Watcher(hub, client, limit_bytes=4000)  # room for about four frames
    hub.watch("replay", watcher, 0)
    # Read page after page, each no larger than the client's room, at the client's pace.
    await client.read(201)
    assert client.seqs("replay") == list(range(1, 202))
    assert watcher.ended == ["replay"]
    assert (hub.watch_count, hub.paused_count) == (0, 0)
    assert reader_of(hub).calls > 200_000 // 4000


async def test_live_frames_for_a_paused_watch_come_from_the_stream_even_after_the_end(
    hub: Hub, migrated: redis.Redis
) -> None:
    job = await Job(migrated, hub, "live", 500).create()
    client = Client(window=1)
    watcher = Watcher(hub, client, limit_bytes=2000)
    hub.watch("live", watcher, 0)
    await job.emit(3)
    await client.read(3)
    # The client stops reading; the job goes on and finishes while its watch is paused.
    await job.emit(60)
    await job.emit(1, done=True)
    assert hub.paused_count == 1
    await client.read(61)
    assert client.seqs("live") == list(range(1, 65))
    assert watcher.ended == ["live"]
    assert hub.paused_count == 0


async def test_frames_published_while_a_read_is_out_are_read_again(
    hub: Hub, migrated: redis.Redis
) -> None:
    job = await Job(migrated, hub, "dirty", 100).create()
    await job.emit(10, publish=False)
    client = Client(window=100)
    watcher = Watcher(hub, client, limit_bytes=100_000)
    reader = reader_of(hub)
    reader.gate.clear()
    hub.watch("dirty", watcher, 0)
    await asyncio.wait_for(reader.reading.wait(), 10)
    # The page (events 1-10) is read and held; meanwhile 11-15 are published, and the watch,
    # still at 0, can take none of them live.
    await job.emit(5)
    reader.gate.set()
    await client.read(15)  # nothing else will come: 11-15 must come from a second read
    assert client.seqs("dirty") == list(range(1, 16))


async def test_a_drain_while_a_read_is_out_is_not_lost(hub: Hub, migrated: redis.Redis) -> None:
    job = await Job(migrated, hub, "race", 500).create()
    await job.emit(40, publish=False)
    slow_client = Client(window=1)
    slow = Watcher(hub, slow_client, limit_bytes=2000)
    hub.watch("race", slow, 0)
    await wait_for(lambda: hub.paused_count == 1, what="the slow watch to be paused")
    # A second watcher's catch-up is held in flight while the slow client drains.
    reader = reader_of(hub)
    reader.gate.clear()
    reader.reading.clear()
    other = Watcher(hub, Client(window=10), limit_bytes=100_000)
    hub.watch("race", other, 40)
    await asyncio.wait_for(reader.reading.wait(), 10)
    await slow_client.read(3)  # the drain resumes the slow watch while the job is being read
    assert hub.paused_count == 0
    reader.gate.set()
    await slow_client.read(37)  # nothing more is published: this comes from a later read
    assert slow_client.seqs("race") == list(range(1, 41))


async def test_a_client_that_reads_nothing_does_not_hold_back_another(
    hub: Hub, migrated: redis.Redis
) -> None:
    job = await Job(migrated, hub, "shared", 500).create()
    stuck_client, fast_client = Client(window=1), Client(window=1000)
    stuck = Watcher(hub, stuck_client, limit_bytes=2000)
    fast = Watcher(hub, fast_client, limit_bytes=2000)
    hub.watch("shared", stuck, 0)
    hub.watch("shared", fast, 0)
    for _ in range(10):
        await job.emit(20)
        await fast_client.read(20)
    await job.emit(1, done=True)
    await fast_client.read(1)
    assert fast_client.seqs("shared") == list(range(1, 202))
    assert hub.paused_count == 1 and fast.ended == ["shared"]
    # The stuck one reads at last, and gets everything too.
    await stuck_client.read(201)
    assert stuck_client.seqs("shared") == list(range(1, 202))
    assert hub.paused_count == 0


async def test_one_drain_resumes_every_job_of_the_client(hub: Hub, migrated: redis.Redis) -> None:
    jobs = [await Job(migrated, hub, f"j{i}", 300).create() for i in range(4)]
    client = Client(window=1)
    watcher = Watcher(hub, client, limit_bytes=1500)
    for job in jobs:
        hub.watch(job.name, watcher, 0)
    for job in jobs:
        await job.emit(30)
        await job.emit(1, done=True)
    await wait_for(lambda: hub.paused_count == 4, what="every watch to be paused")
    await client.read(4 * 31)
    for job in jobs:
        assert client.seqs(job.name) == list(range(1, 32))
    assert sorted(watcher.ended) == [job.name for job in jobs]


async def test_pages_are_bounded_in_bytes_and_hold_at_least_one_frame(
    migrated: redis.Redis,
) -> None:
    hub = Hub(EventReader(migrated, KEYS), GatewayStats(), MemorySource(), page_size=500)
    job = await Job(migrated, hub, "big", 10_000).create()
    await job.emit(50, publish=False)
    reader = EventReader(migrated, KEYS)
    requests = [
        PageRequest("big", 0, 35_000),
        PageRequest("big", 10, 1),
        PageRequest("big", 48, 10**9),
        PageRequest("missing", 0, 1000),
    ]
    pages = await reader.pages(requests, 500)
    assert [seq_of_frame(f) for f in pages[0].frames] == [1, 2, 3]
    assert pages[0].more and sum(len(f) for f in pages[0].frames) <= 35_000
    assert [seq_of_frame(f) for f in pages[1].frames] == [11]  # one, whatever its size
    assert [seq_of_frame(f) for f in pages[2].frames] == [49, 50] and not pages[2].more
    assert (pages[3].exists, pages[3].frames) == (False, [])
    assert (pages[0].last_seq, pages[0].exists, pages[0].finished) == (50, True, False)
    # A flushed script cache costs one EVAL, not an error.
    await migrated.script_flush()
    again = await reader.pages(requests[:1], 500)
    assert again[0].frames == pages[0].frames


async def test_a_malformed_live_frame_is_counted_and_its_job_caught_up(
    hub: Hub, migrated: redis.Redis
) -> None:
    job = await Job(migrated, hub, "bad", 10).create()
    other = await Job(migrated, hub, "good", 10).create()
    client = Client(window=100)
    watcher = Watcher(hub, client, limit_bytes=100_000)
    hub.watch("bad", watcher, 0)
    hub.watch("good", watcher, 0)
    await job.emit(2, publish=False)  # stored, but what arrives live is garbage
    job.source.push("bad", b'{"seq":1,"job":"bad" garbage')
    await other.emit(2)
    await client.read(4)
    assert (client.seqs("bad"), client.seqs("good")) == ([1, 2], [1, 2])
    assert hub._stats.malformed_frames == 1


async def test_one_call_reads_no_more_than_its_byte_budget(migrated: redis.Redis) -> None:
    hub = Hub(EventReader(migrated, KEYS), GatewayStats(), MemorySource(), page_size=500)
    jobs = [await Job(migrated, hub, f"big{i}", 200_000).create() for i in range(6)]
    for job in jobs:
        await job.emit(20, publish=False)  # 4 MB each
    reader = EventReader(migrated, KEYS)
    requests = [PageRequest(job.name, 0, 4 << 20) for job in jobs]
    pages = await reader.pages(requests, 500)
    read = [page for page in pages if not page.unread]
    # Pages are read until the call has read its budget (8 MiB), then the rest wait.
    assert [page.unread for page in pages] == [False, False, False, True, True, True]
    assert all(len(page.frames) == 20 for page in read)
    later = await reader.pages([r for r, p in zip(requests, pages, strict=True) if p.unread], 500)
    assert [len(page.frames) for page in later] == [20, 20, 20]
    # The hub takes them all through, whatever the budget.
    watcher = Watcher(hub, Client(window=1000), limit_bytes=8 << 20)
    await hub.start()
    try:
        for job in jobs:
            hub.watch(job.name, watcher, 0)
        await watcher.client.read(120)
        assert all(watcher.client.seqs(job.name) == list(range(1, 21)) for job in jobs)
    finally:
        await hub.stop()
