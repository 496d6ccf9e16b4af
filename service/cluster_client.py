"""A Redis Cluster client whose commands wait for a free connection instead of failing.

redis-py 8.1's asyncio `RedisCluster` refuses a command at once when every connection to its
node is busy (`MaxConnectionsError`), unlike the single-server `BlockingConnectionPool`. Worse,
that error is a `ConnectionError`, and a pipeline that meets one closes the whole client,
breaking every other command in flight on it (they fail on a connection whose writer is
gone). A worker at concurrency 58 met both within a second of starting.

So each command and each pipeline takes a turn first, and there are no more turns than
connections per node: no node is ever asked for a connection it does not have. A command a
pipeline sends on its own behalf (a redirected one) uses the pipeline's turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import ConnectionError as RedisConnectionError

_holding_turn: ContextVar[bool] = ContextVar("holding_turn", default=False)


class WaitingCluster(redis.RedisCluster):
    def __init__(self, *, turn_timeout_s: float | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._turns = asyncio.Semaphore(int(kwargs.get("max_connections", 1)))
        self._turn_timeout_s = turn_timeout_s

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if _holding_turn.get():
            yield
            return
        try:
            async with asyncio.timeout(self._turn_timeout_s):
                await self._turns.acquire()
        except TimeoutError:
            raise RedisConnectionError("no Redis connection became free in time") from None
        token = _holding_turn.set(True)
        try:
            yield
        finally:
            _holding_turn.reset(token)
            self._turns.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refuses it, as redis-py does
        # redis-py builds its ClusterPipeline the same way (its typing marks a base abstract).
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]


class _WaitingPipeline(ClusterPipeline):
    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, WaitingCluster)
        async with client.turn():
            return await super().execute(raise_on_error, allow_redirections)
