"""Live sources on their own, against real Redis: what they hand the hub, and how they fail.

The sink records what a source reports; it is the `LiveSink` interface, nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as redis

from service.codec import ENTRY_FIELD, event_frame
from service.config import Settings
from service.delivery.pubsub import PubSubSource
from service.delivery.xread import XreadSource
from service.keys import Keys
from service.model import EventKind, ServiceError, stream_id
from service.redis_client import RedisFactory
from service.stats import GatewayStats
from tests.conftest import wait_for

KEYS = Keys()


@dataclass
class Sink:
    frames: list[tuple[str, bytes]] = field(default_factory=list)
    missed_calls: list[tuple[tuple[str, ...] | None, str]] = field(default_factory=list)
    errors: list[tuple[list[str] | None, str]] = field(default_factory=list)
    explode_for: str | None = None

    def publish(self, job: str, frame: bytes) -> None:
        if job == self.explode_for:
            raise RuntimeError("a bug in delivery")
        self.frames.append((job, frame))

    def missed(self, jobs: Iterable[str] | None, cause: str) -> None:
        self.missed_calls.append((None if jobs is None else tuple(jobs), cause))

    def report(self, jobs: list[str] | None, error: ServiceError) -> None:
        self.errors.append((jobs, error.code.value))

    def server_changed(self, jobs: list[str]) -> None:
        self.missed_calls.append((tuple(jobs), "failover"))


def frame(job: str, seq: int) -> bytes:
    return event_frame(seq, job, EventKind.DATA, 1, b"{}")


@pytest.mark.logs_errors  # provoked on purpose
async def test_an_xread_loop_that_fails_is_restarted_and_its_job_caught_up(
    settings: Settings, migrated: redis.Redis
) -> None:
    source = XreadSource(settings, RedisFactory(settings, "gateway"))
    sink = Sink()
    await source.start(sink)
    try:
        # Not Redis trouble: the job's key holds something that is not a stream.
        await migrated.set(KEYS.events("j"), "not a stream")
        source.follow("j", 0)
        await wait_for(lambda: not source.ready(), what="the failed loop to show in ready()")
        await migrated.delete(KEYS.events("j"))
        await migrated.xadd(KEYS.events("j"), {ENTRY_FIELD: frame("j", 1)}, id=stream_id(1))
        await wait_for(lambda: sink.frames, what="the restarted loop to read again")
        assert source.ready()
        assert sink.frames == [("j", frame("j", 1))]
        assert (("j",), "restart") in sink.missed_calls
    finally:
        await source.stop()


@pytest.mark.logs_errors  # provoked on purpose
async def test_a_failure_in_the_hub_is_not_taken_for_a_lost_subscriber(
    settings: Settings, migrated: redis.Redis
) -> None:
    stats = GatewayStats()
    factory = RedisFactory(settings, "gateway")
    source = PubSubSource(settings, factory, migrated, stats)
    sink = Sink(explode_for="bad")
    await source.start(sink)
    try:
        await wait_for(source.ready, what="the subscriber to connect")
        await migrated.publish(KEYS.channel("bad"), frame("bad", 1))
        await migrated.publish(KEYS.channel("good"), frame("good", 1))
        await wait_for(lambda: sink.frames, what="the good job's frame")
        assert sink.frames == [("good", frame("good", 1))]
        assert (("bad",), "gap") in sink.missed_calls
        assert (stats.delivery_errors, stats.subscriber_reconnects) == (1, 0)
        assert source.ready()
    finally:
        await source.stop()
