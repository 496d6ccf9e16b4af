"""The Redis layer: command counting and the mapping of real failures to service errors."""

from __future__ import annotations

import pytest
import redis.asyncio as redis
from redis.exceptions import AskError, ClusterDownError, ClusterError, MovedError, TryAgainError

from service.model import RedisAtCapacity, RedisBusy, RedisUnavailable
from service.redis_client import (
    BUSY_MESSAGE,
    CAPACITY_MESSAGE,
    UNAVAILABLE_MESSAGE,
    RedisFactory,
    is_topology_change,
    redis_errors,
    retrying,
)
from tests.conftest import make_settings
from tests.redis_servers import RedisServer


async def test_every_command_is_counted_by_name(redis_server: RedisServer) -> None:
    factory = RedisFactory(make_settings(redis_server.url), "gateway")
    client = factory.commands()
    await client.set("a", 1)
    await client.get("a")
    pipe = client.pipeline(transaction=False)
    pipe.get("a")
    pipe.get("b")
    pipe.xlen("s")
    await pipe.execute()
    await client.aclose()
    counts = factory.counter.counts
    assert (counts["SET"], counts["GET"], counts["XLEN"]) == (1, 3, 1)


async def test_a_slow_redis_is_busy(redis_server: RedisServer, rclient: redis.Redis) -> None:
    client = RedisFactory(
        make_settings(redis_server.url, redis_socket_timeout_s=0.2), "gateway"
    ).commands()
    await rclient.execute_command("CLIENT", "PAUSE", 1000, "ALL")
    with pytest.raises(RedisBusy, match=BUSY_MESSAGE), redis_errors("get"):
        await client.get("a")
    await client.aclose()


async def test_a_provider_limit_is_capacity(
    redis_server: RedisServer, rclient: redis.Redis
) -> None:
    script = "return redis.error_reply('ERR max requests limit exceeded. Limit: 500000')"
    with pytest.raises(RedisAtCapacity, match=CAPACITY_MESSAGE), redis_errors("eval"):
        await rclient.eval(script, 0)


async def test_an_unreachable_redis_is_unavailable(redis_server: RedisServer) -> None:
    client = RedisFactory(make_settings(redis_server.url), "gateway").commands()
    redis_server.stop()
    with pytest.raises(RedisUnavailable, match=UNAVAILABLE_MESSAGE), redis_errors("get"):
        await client.get("a")
    await client.aclose()


async def test_idempotent_reads_are_retried_across_a_restart(redis_server: RedisServer) -> None:
    client = RedisFactory(make_settings(redis_server.url), "gateway").commands()
    await client.set("a", "1")
    redis_server.restart()  # the pooled connection is now dead
    assert await retrying(lambda: client.exists("a"), attempts=3) == 0
    await client.aclose()


@pytest.mark.parametrize(
    "error",
    [
        MovedError("3999 127.0.0.1:7001"),
        AskError("3999 127.0.0.1:7001"),
        TryAgainError("Multiple keys request during rehashing of slot"),
        ClusterDownError("The cluster is down"),
        ClusterError("TTL exhausted."),  # redis-py's cluster pipeline, redirections run out
    ],
)
def test_a_slot_moving_is_a_topology_change(error: Exception) -> None:
    assert is_topology_change(error)


def test_other_cluster_errors_are_not() -> None:
    assert not is_topology_change(ClusterError("Slot 3999 has no primary"))
