"""The WebSocket contract on a real Redis Cluster (three primaries, a replica each), both modes.

The same test functions as against a single Redis, collected here with a `stack` built on the
cluster: `pubsub` mode is sharded Pub/Sub there (`SPUBLISH`, one subscriber per primary).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import DELIVERY_MODES
from service.keys import Keys
from service.migrate import migrate
from tests.conftest import make_settings
from tests.gateway.test_contract import (
    Stack,
    test_a_finished_job_replays_to_its_end_and_the_watch_ends,
    test_a_forged_token_is_unauthorized_and_gets_nothing,
    test_bad_frames_get_their_error_and_the_socket_stays_usable,
    test_gone_for_expired_results_and_rewound_positions,
    test_many_concurrent_watches_get_every_event_once_in_order,
    test_resume_with_after_on_a_new_socket_continues_exactly,
    test_unwatch_and_the_watch_limit,
)
from tests.processes import running_gateway, running_worker
from tests.redis_cluster import LocalCluster
from tests.test_metrics import samples
from tests.ws_client import assert_exact, connect

pytestmark = [
    pytest.mark.slow,
    # redis-py 8.1's asyncio RedisCluster leaves the connection it used to read the slot map
    # from the startup node open when it replaces that node object (one socket per client
    # and refresh, garbage-collected later); our own connections are closed, as elsewhere.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

__all__ = [
    "test_a_finished_job_replays_to_its_end_and_the_watch_ends",
    "test_a_forged_token_is_unauthorized_and_gets_nothing",
    "test_bad_frames_get_their_error_and_the_socket_stays_usable",
    "test_gone_for_expired_results_and_rewound_positions",
    "test_many_concurrent_watches_get_every_event_once_in_order",
    "test_resume_with_after_on_a_new_socket_continues_exactly",
    "test_unwatch_and_the_watch_limit",
]


@pytest.fixture(params=DELIVERY_MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def stack(mode: str, cluster: LocalCluster, tmp_path: Path) -> AsyncIterator[Stack]:
    client: Any = cluster.client()
    try:
        await client.flushall(target_nodes=client.PRIMARIES)
        await migrate(client, Keys(), report=lambda _: None)
        settings = make_settings(
            cluster.url, delivery_mode=mode, max_watches_per_socket=5, redis_cluster=True
        )
        async with running_worker(settings, concurrency=8), running_gateway(settings) as base:
            yield Stack(base, settings, cluster.nodes[0], client)
    finally:
        await client.aclose()


async def test_commands_are_counted_and_no_node_is_taken_for_a_failover(stack: Stack) -> None:
    """Every node has its own run id: the gateway must not read two nodes as one server that
    keeps failing over (which would hold back live frames and re-check every job)."""
    job, token = await stack.job(n=30)
    async with connect(stack.base) as ws:
        await ws.watch(job, token)
        frames = (await ws.events_until_terminal({job}))[job]
    assert_exact(frames[1:], job, 30)
    async with httpx.AsyncClient(base_url=stack.base) as http:
        found = samples((await http.get("/metrics")).text)
    sent = sum(v for (name, _), v in found.items() if name == "resultcast_redis_commands_total")
    assert sent > 0
    changes = [v for (name, _), v in found.items() if "redis_server_changes" in name]
    assert changes == [0]
    if stack.settings.delivery_mode == "pubsub":
        # Sharded Pub/Sub subscribes per job: what was published before the subscription
        # took effect is read from the stream, under its own cause.
        subscribed = (("cause", "subscribe"), ("mode", "pubsub"))
        assert found[("resultcast_catch_ups_total", subscribed)] >= 1
