"""Delivery: how a job's events get from Redis to the sessions watching it.

One hub (`hub.Hub`, the `Delivery`) over one live source per process: `pubsub` (a pattern
subscription; on a Redis Cluster, `sharded`: one subscriber per shard) or `xread`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import redis.asyncio as redis

from service.config import Settings
from service.delivery.base import Delivery, LiveSource, Watcher
from service.delivery.hub import Hub
from service.keys import Keys
from service.redis_client import RedisFactory
from service.stats import GatewayStats
from service.streams import EventReader

__all__ = ["LIVE_SOURCES", "Delivery", "Watcher", "create_delivery", "create_source"]

SourceFactory = Callable[[Settings, RedisFactory, redis.Redis, GatewayStats], LiveSource]


def _pubsub(
    settings: Settings, factory: RedisFactory, commands: redis.Redis, stats: GatewayStats
) -> LiveSource:
    from service.delivery.pubsub import PubSubSource

    return PubSubSource(settings, factory, commands, stats)


def _sharded(
    settings: Settings, _factory: RedisFactory, commands: redis.Redis, _stats: GatewayStats
) -> LiveSource:
    from service.delivery.sharded import ShardedSource

    return ShardedSource(settings, cast(redis.RedisCluster, commands))


def _xread(
    settings: Settings, factory: RedisFactory, commands: redis.Redis, _stats: GatewayStats
) -> LiveSource:
    from service.delivery.xread import XreadSource

    return XreadSource(settings, factory, commands)


# Every live source over Redis, by name: a new one is a module and a line here. (The
# in-memory source of the tests, `memory.py`, needs no Redis and is not chosen by settings.)
LIVE_SOURCES: dict[str, SourceFactory] = {"pubsub": _pubsub, "sharded": _sharded, "xread": _xread}


def source_name(settings: Settings) -> str:
    """The live source these settings choose: `xread` mode reads per job on one Redis and on
    a cluster alike; `pubsub` mode is a pattern subscription, sharded on a cluster."""
    if settings.delivery_mode == "xread":
        return "xread"
    return "sharded" if settings.redis_cluster else "pubsub"


def create_source(
    settings: Settings, factory: RedisFactory, commands: redis.Redis, stats: GatewayStats
) -> LiveSource:
    return LIVE_SOURCES[source_name(settings)](settings, factory, commands, stats)


def create_delivery(
    settings: Settings, factory: RedisFactory, commands: redis.Redis, stats: GatewayStats
) -> Delivery:
    """The one place where the delivery mode is chosen."""
    return Hub(
        EventReader(commands, Keys(settings.key_prefix), factory.breaker),
        stats,
        create_source(settings, factory, commands, stats),
        page_size=settings.catch_up_page_size,
        max_replay_events=settings.max_replay_events,
        server=factory.identity,
    )
