"""Redis Cluster clients that survive the loss of any node, and wait for a free connection.

redis-py finds the slot of a command with "movable" keys (XREAD, XREADGROUP) by asking one
node (`COMMAND GETKEYS`), before and outside the retry that follows topology changes. When
that node is the one that died (at first, the node `REDIS_URL` names), every such command
fails for good: a worker never took another job. `ClusterClient` reads the keys of the
stream reads itself, and has the topology re-read when the node it asks for other commands'
keys does not answer.

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
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

_holding_turn: ContextVar[bool] = ContextVar("holding_turn", default=False)
STREAM_READS = frozenset({"XREAD", "XREADGROUP"})


def stream_read_keys(command: str, args: tuple[Any, ...]) -> list[Any] | None:
    """The keys of an XREAD or XREADGROUP (the first half of what follows STREAMS); None for
    any other command."""
    if command.upper() not in STREAM_READS:
        return None
    for index, arg in enumerate(args):
        if (arg.decode() if isinstance(arg, bytes) else str(arg)).upper() == "STREAMS":
            rest = args[index + 1 :]
            return list(rest[: len(rest) // 2])
    return []


class ClusterClient(redis.RedisCluster):
    """redis-py's cluster client, without a node whose loss stops commands for good."""

    async def _determine_slot(self, command: str, *args: Any) -> int:
        keys = stream_read_keys(command, args)
        if keys is not None:
            slots = {self.keyslot(key) for key in keys}
            if len(slots) != 1:
                raise RedisClusterException(f"{command}: the streams must share one slot")
            return slots.pop()
        try:
            return await super()._determine_slot(command, *args)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            # The node asked for the command's keys did not answer: the next command re-reads
            # the topology from every node seen, which points the question at a live one.
            self._request_refresh(last_failed_node_name=self.commands_parser.node.name)
            raise


class WaitingCluster(ClusterClient):
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
