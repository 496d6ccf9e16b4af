"""The hub-level source contract (tests/delivery/test_source_contract.py) held by the sharded
source, on the local Redis Cluster: the same tests, collected again here with this rig."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import pytest
import redis.asyncio as redis

from tests.conftest import make_settings
from tests.delivery.test_source_contract import (  # noqa: F401 - collected again, on a cluster
    Rig,
    hub_over,
    redis_rig,
    test_a_lost_notification_is_caught_up_by_the_next_one,
    test_nothing_reaches_a_watcher_after_it_unwatched,
    test_watchers_at_different_positions_get_each_event_once_in_order,
)
from tests.redis_cluster import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture
async def rig(cluster: LocalCluster) -> AsyncIterator[Rig]:
    settings = make_settings(cluster.url, redis_cluster=True)
    client = cluster.client()
    try:
        # The cluster lives for the module; each test writes job "j" anew, as on a fresh Redis.
        await client.flushall(target_nodes=client.PRIMARIES)
        parts = redis_rig("sharded", settings, cast(redis.Redis, client))
        async with hub_over("sharded", *parts) as rigged:
            yield rigged
    finally:
        await client.aclose()
