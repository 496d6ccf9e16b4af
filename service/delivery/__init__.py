"""Delivery backends: how a job's events get from Redis to the sessions watching it."""

from __future__ import annotations

import redis.asyncio as redis

from service.config import Settings
from service.delivery.base import Delivery, Watcher
from service.redis_client import RedisFactory
from service.stats import GatewayStats

__all__ = ["Delivery", "Watcher", "create_delivery"]


def create_delivery(
    settings: Settings, factory: RedisFactory, commands: redis.Redis, stats: GatewayStats
) -> Delivery:
    """The one place where the delivery mode is chosen."""
    if settings.delivery_mode == "xread":
        from service.delivery.xread import XreadDelivery

        return XreadDelivery(settings, factory, commands, stats)
    from service.delivery.pubsub import PubSubDelivery

    return PubSubDelivery(settings, factory, commands, stats)
