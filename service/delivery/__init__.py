"""Delivery: how a job's events get from Redis to the sessions watching it.

One hub (`hub.Hub`, the `Delivery`) over one live source per process: `pubsub` (a pattern
subscription; on a Redis Cluster, `sharded`: one subscriber per shard) or `xread`.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as redis

from service.config import Settings
from service.delivery.base import Delivery, LiveSource, Watcher
from service.delivery.hub import Hub
from service.keys import Keys
from service.redis_client import RedisFactory
from service.stats import GatewayStats
from service.streams import EventReader

__all__ = ["Delivery", "Watcher", "create_delivery"]


def create_delivery(
    settings: Settings, factory: RedisFactory, commands: redis.Redis, stats: GatewayStats
) -> Delivery:
    """The one place where the delivery mode is chosen."""
    source: LiveSource
    if settings.delivery_mode == "xread":
        from service.delivery.xread import XreadSource

        source = XreadSource(settings, factory, commands)
    elif settings.redis_cluster:
        from service.delivery.sharded import ShardedSource

        source = ShardedSource(settings, cast(redis.RedisCluster, commands))
    else:
        from service.delivery.pubsub import PubSubSource

        source = PubSubSource(settings, factory, commands, stats)
    return Hub(
        EventReader(commands, Keys(settings.key_prefix), factory.breaker),
        stats,
        source,
        page_size=settings.catch_up_page_size,
        max_replay_events=settings.max_replay_events,
        server=factory.identity,
    )
