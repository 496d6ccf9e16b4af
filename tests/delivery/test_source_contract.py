"""One contract, every live source: memory, pubsub and xread behind the same hub (and the
sharded one on a local Redis Cluster: tests/cluster/test_sharded_source_contract.py).

Each source is given the hub and a way to write a job's event the way a worker does (durably,
and notified); the same tests then hold for all of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest
import redis.asyncio as redis

from service.codec import event_frame
from service.config import Settings
from service.delivery import LIVE_SOURCES
from service.delivery.base import LiveSource
from service.delivery.hub import Hub
from service.delivery.memory import MemorySource, MemoryStreams
from service.keys import Keys
from service.model import EventKind
from service.publisher import EmitLimits
from service.redis_client import RedisFactory
from service.scripts import CREATE_JOB, EMIT
from service.stats import GatewayStats
from service.streams import EventReader, PageReader, store_event
from tests.conftest import wait_for
from tests.delivery.clients import Client, Watcher

KEYS = Keys()
LIMITS = EmitLimits(max_events=1000, max_event_bytes=1 << 20, max_job_bytes=64 << 20)
# The sharded source needs a Redis Cluster: tests/cluster/ holds it to the same contract.
SOURCES = ["memory", *(name for name in LIVE_SOURCES if name != "sharded")]

# (job, seq, terminal, notify): store the event; notify=False is a notification lost.
Write = Callable[[str, int, bool, bool], Awaitable[None]]


@dataclass
class Rig:
    hub: Hub
    write: Write

    async def events(self, job: str, first: int, last: int, *, notify: bool = True) -> None:
        for seq in range(first, last + 1):
            await self.write(job, seq, False, notify)

    async def done(self, job: str, seq: int) -> None:
        await self.write(job, seq, True, True)


def memory_rig() -> tuple[LiveSource, PageReader, Write]:
    source, streams = MemorySource(), MemoryStreams()

    async def write(job: str, seq: int, terminal: bool, notify: bool) -> None:
        kind = EventKind.DONE if terminal else EventKind.DATA
        frame = event_frame(seq, job, kind, 1, b"{}")
        streams.append(job, frame, terminal=terminal)
        if notify:
            source.push(job, frame)

    return source, streams, write


def redis_rig(
    name: str, settings: Settings, client: redis.Redis
) -> tuple[LiveSource, PageReader, Write]:
    factory = RedisFactory(settings, "gateway")
    source = LIVE_SOURCES[name](settings, factory, client, GatewayStats())
    created: set[str] = set()

    async def write(job: str, seq: int, terminal: bool, notify: bool) -> None:
        if job not in created:
            created.add(job)
            await CREATE_JOB(client, [KEYS.meta(job)], ["count", 0, 60_000])
        kind = EventKind.DONE if terminal else EventKind.DATA
        if notify:  # the worker's own script: XADD and PUBLISH, atomically
            keys = [KEYS.events(job), KEYS.meta(job), KEYS.channel(job)]
            limits = replace(LIMITS, sharded=settings.redis_cluster)  # SPUBLISH on a cluster
            args = [*limits.argv(job, 60_000), seq, kind.value, 1, "{}"]
            await EMIT(client, keys, args)
        else:  # stored, but the notification is lost
            pipe = client.pipeline(transaction=False)
            store_event(pipe, KEYS, job, seq, event_frame(seq, job, kind, 1, b"{}"))
            await pipe.execute()

    return source, EventReader(client, KEYS), write


@pytest.fixture(params=SOURCES)
async def rig(
    request: pytest.FixtureRequest, settings: Settings, migrated: redis.Redis
) -> AsyncIterator[Rig]:
    name = str(request.param)
    parts = memory_rig() if name == "memory" else redis_rig(name, settings, migrated)
    async with hub_over(name, *parts) as rigged:
        yield rigged


@asynccontextmanager
async def hub_over(
    name: str, source: LiveSource, reader: PageReader, write: Write
) -> AsyncIterator[Rig]:
    """A started hub over `source`, once the source is ready."""
    hub = Hub(reader, GatewayStats(), source, page_size=100)
    await hub.start()
    try:
        await wait_for(hub.ready, what=f"the {name} source to be ready")
        yield Rig(hub, write)
    finally:
        await hub.stop()


async def test_watchers_at_different_positions_get_each_event_once_in_order(rig: Rig) -> None:
    await rig.events("j", 1, 5)
    first = Watcher(rig.hub, Client(500), 1 << 20)
    late = Watcher(rig.hub, Client(500), 1 << 20)
    rig.hub.watch("j", first, 0)
    rig.hub.watch("j", late, 3)
    await first.client.read(5)
    await rig.events("j", 6, 30)
    await rig.done("j", 31)
    await first.client.read(26)
    await late.client.read(28)
    assert first.client.seqs("j") == list(range(1, 32))
    assert late.client.seqs("j") == list(range(4, 32))
    assert first.ended == late.ended == ["j"]
    assert rig.hub.watch_count == 0


async def test_a_lost_notification_is_caught_up_by_the_next_one(rig: Rig) -> None:
    watcher = Watcher(rig.hub, Client(500), 1 << 20)
    rig.hub.watch("j", watcher, 0)
    await rig.events("j", 1, 2)
    await watcher.client.read(2)
    await rig.events("j", 3, 6, notify=False)
    await rig.events("j", 7, 7)
    await watcher.client.read(5)
    assert watcher.client.seqs("j") == list(range(1, 8))


async def test_nothing_reaches_a_watcher_after_it_unwatched(rig: Rig) -> None:
    stays = Watcher(rig.hub, Client(500), 1 << 20)
    leaves = Watcher(rig.hub, Client(500), 1 << 20)
    rig.hub.watch("j", stays, 0)
    rig.hub.watch("j", leaves, 0)
    await rig.events("j", 1, 2)
    await leaves.client.read(2)
    rig.hub.unwatch("j", leaves)
    await rig.events("j", 3, 4)
    await stays.client.read(4)
    assert leaves.client.seqs("j") == [1, 2] and leaves.client.frames.empty()
