"""Replies read off a subscribed connection: what redis-py's own read gives, without it."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as redis
from redis._parsers import _AsyncRESP2Parser
from redis.asyncio.connection import DefaultParser
from redis.exceptions import ResponseError

from service.delivery.replies import NOT_ENOUGH_DATA, Replies
from tests.redis_servers import RedisServer


async def subscribed(server: RedisServer, parser: Any = None) -> redis.Connection:
    """A RESP2 connection (as the gateway's), subscribed to every job's channel."""
    connection = redis.Connection(
        host="127.0.0.1", port=server.port, protocol=2, parser_class=parser or DefaultParser
    )
    await connection.connect()
    await connection.send_command("PSUBSCRIBE", "job:*")
    return connection


async def all_replies(replies: Replies, count: int) -> list[object]:
    got: list[object] = []
    while len(got) < count:
        reply = replies.next()
        if reply is NOT_ENOUGH_DATA:
            await replies.receive()
        else:
            got.append(reply)
    return got


@pytest.mark.parametrize("direct", [True, False])
async def test_every_reply_in_order_and_whole(
    redis_server: RedisServer, rclient: redis.Redis, direct: bool
) -> None:
    """Frames of every size, some split across reads, some many to a read; without hiredis
    (redis-py's own parser), the same through the connection's own read."""
    connection = await subscribed(redis_server, None if direct else _AsyncRESP2Parser)
    replies = Replies(connection)
    assert replies.direct is direct
    assert await all_replies(replies, 1) == [[b"psubscribe", b"job:*", 1]]
    sizes = [0, 1, 100, 70_000, 3, 300_000] + [10] * 500
    async with rclient.pipeline(transaction=False) as pipe:
        for i, size in enumerate(sizes):
            pipe.publish(f"job:{i}", bytes([65 + i % 26]) * size)
        await pipe.execute()
    got = await all_replies(replies, len(sizes))
    assert got == [
        [b"pmessage", b"job:*", f"job:{i}".encode(), bytes([65 + i % 26]) * size]
        for i, size in enumerate(sizes)
    ]
    await connection.disconnect()


async def test_an_error_reply_is_raised(redis_server: RedisServer) -> None:
    connection = await subscribed(redis_server)
    replies = Replies(connection)
    await all_replies(replies, 1)
    await connection.send_command("GET", "x")  # not allowed while subscribed
    with pytest.raises(ResponseError):
        await all_replies(replies, 1)
    await connection.disconnect()


async def test_a_closed_connection_raises(redis_server: RedisServer, rclient: redis.Redis) -> None:
    connection = await subscribed(redis_server)
    replies = Replies(connection)
    await all_replies(replies, 1)
    await rclient.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    with pytest.raises(ConnectionError):
        await all_replies(replies, 1)
    await connection.disconnect()
