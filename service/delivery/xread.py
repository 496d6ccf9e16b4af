"""`DELIVERY_MODE=xread`: the old design, kept for comparison (the A/B benchmark).

Each watched job is followed by its own loop of blocking `XREAD` calls (`XREAD_BLOCK_MS`,
default 15 s, `XREAD_COUNT` entries at most), each on a connection of its own from a dedicated
pool whose socket timeout outlasts the block. An idle watched job therefore costs about
3600 / 15 = 240 commands an hour and one Redis connection for as long as it is watched; with
the seed's "before" settings (`XREAD_BLOCK_MS=100 XREAD_COUNT=10`) it polls ten times a second.

Catch-up on watch, `gone`, flow control and error reporting are the hub's, exactly as in
`pubsub` mode, so both modes give the same guarantees behind the same protocol. When the pool
is full (`XREAD_MAX_CONNECTIONS`), a new watch gets a `capacity` error and is retried with
backoff; it never hangs. A loop that fails in a way that is not Redis trouble is logged,
restarted after a back-off and its job caught up; `ready` is False meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.aio import stop_tasks
from service.codec import ENTRY_FIELD
from service.config import Settings
from service.delivery.base import CatchUpCause, LiveSink
from service.delivery.supervise import restart_forever
from service.keys import Keys
from service.model import RedisAtCapacity, ServiceError, stream_id
from service.redis_client import (
    BLOCK_MARGIN_S,
    CAPACITY_MESSAGE,
    RedisFactory,
)

log = logging.getLogger(__name__)

# XREAD bounds a read by count only: after large events, ask for fewer, so that one read
# brings about this much at most (and at least one event).
READ_BYTES = 1024 * 1024


class XreadSource:
    """The `xread` live source: a supervised blocking-read loop per followed job."""

    mode = "xread"

    def __init__(
        self, settings: Settings, factory: RedisFactory, commands: redis.Redis | None = None
    ) -> None:
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._factory = factory
        # On a Redis Cluster each loop has a connection of its own to its job's primary
        # (redis-py's cluster pool hands out a connection that a cancelled read left broken).
        self._cluster = commands if isinstance(commands, redis.RedisCluster) else None
        self._readers = factory.blocking(
            settings.xread_block_ms, max_connections=settings.xread_max_connections, wait=False
        )
        self._sink: LiveSink | None = None
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._cursors: dict[str, int] = {}
        self._crashed: set[str] = set()  # jobs whose loop is backing off after a bug
        self._lost: set[str] = set()  # jobs whose loop lost Redis and has not read since
        self._reading: set[str] = set()  # jobs whose loop has read on its current connection
        self._stopping: set[asyncio.Task[None]] = set()
        self._node_readers = 0  # on a cluster: connections the loops hold now

    async def start(self, sink: LiveSink) -> None:
        self._sink = sink

    async def stop(self) -> None:
        await stop_tasks([*self._loops.values(), *self._stopping])
        self._loops.clear()
        await self._readers.aclose()

    def ready(self) -> bool:
        # Nothing of its own to be down but its loops; /readyz also checks Redis itself.
        return not self._crashed

    def describe(self) -> dict[str, Any]:
        return {
            "source": "xread",
            "loops": len(self._loops),
            "loops_restarting": len(self._crashed),
            "loops_without_redis": len(self._lost),
        }

    def follow(self, job: str, after_seq: int) -> None:
        self._cursors[job] = after_seq
        self._loops[job] = asyncio.create_task(
            restart_forever(
                f"the XREAD loop of job {job}",
                lambda: self._follow_once(job),
                on_lost=lambda error: self._lost_redis(job, error),
                on_crash=lambda _e: self._crashed_loop(job),
                on_restart=lambda: self._restarted(job),
                worked=lambda: job in self._reading,
            ),
            name=f"xread-{job}",
        )

    def unfollow(self, job: str) -> None:
        task = self._loops.pop(job, None)
        if task is not None:
            task.cancel()
            # Kept until it has closed its connection; `stop` waits for it.
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        self._cursors.pop(job, None)
        self._crashed.discard(job)
        self._lost.discard(job)
        self._reading.discard(job)

    def _lost_redis(self, job: str, error: ServiceError) -> None:
        if job in self._loops and self._sink is not None:
            self._lost.add(job)
            self._sink.report([job], error)

    def _crashed_loop(self, job: str) -> None:
        if job in self._loops:  # a loop that outlived its unfollow is not a job's outage
            self._crashed.add(job)

    def _still_followed(self, job: str) -> None:
        """End a loop whose job was unfollowed, even if its cancellation was swallowed (a
        redis-py read can turn one into an error on Python 3.11) or the job followed anew."""
        if self._loops.get(job) is not asyncio.current_task():
            raise asyncio.CancelledError

    def _restarted(self, job: str) -> None:
        if job in self._crashed:
            self._crashed.discard(job)
            if self._sink is not None:
                self._sink.missed([job], CatchUpCause.RESTART)

    async def _reader_of(self, key: str) -> tuple[redis.Redis, bool]:
        """The client to read `key` with, and whether it is this loop's own (to close)."""
        if self._cluster is None:
            return self._readers, False
        await self._cluster.initialize()
        node = self._cluster.get_node_from_key(key)
        if node is None:
            raise RedisConnectionError(f"no cluster node serves {key}")
        if self._node_readers >= self._settings.xread_max_connections:
            # The same cap as the pool on one Redis: past it a watch is told `capacity`.
            raise RedisAtCapacity(CAPACITY_MESSAGE)
        timeout_s = self._settings.xread_block_ms / 1000 + BLOCK_MARGIN_S
        self._node_readers += 1
        return self._factory.node(node.host, int(node.port), socket_timeout=timeout_s), True

    async def _follow_once(self, job: str) -> None:
        """Read the job's stream until the connection fails (raised to the supervisor)."""
        self._still_followed(job)
        self._reading.discard(job)
        key = self._keys.events(job)
        if self._cluster is not None and job in self._lost:
            # Where does the job live now? (If the cluster cannot say yet, the read fails and
            # reports it, and this is tried again after a back-off.)
            with contextlib.suppress(Exception):
                await self._cluster.nodes_manager.initialize()
        reader, own = await self._reader_of(key)
        try:
            await self._read(job, key, reader)
        finally:
            if own:
                self._node_readers -= 1
                await reader.aclose()

    async def _read(self, job: str, key: str, reader: redis.Redis) -> None:
        sink = self._sink
        assert sink is not None, "started before reading"
        block_ms, count = self._settings.xread_block_ms, self._settings.xread_count
        while True:
            self._still_followed(job)
            reply: Any = await reader.xread({key: stream_id(self._cursors[job])}, count, block_ms)
            self._still_followed(job)
            self._reading.add(job)
            if job in self._lost:
                self._lost.discard(job)
                sink.missed([job], CatchUpCause.RECONNECT)
            for _, entries in reply or ():
                largest = 0
                for _, fields in entries:
                    frame = fields[ENTRY_FIELD]
                    largest = max(largest, len(frame))
                    sink.publish(job, frame)
                # A terminal event ends the watch, and with it this job's loop and cursor.
                self._still_followed(job)
                last = int(entries[-1][0].split(b"-", 1)[0])
                self._cursors[job] = max(self._cursors[job], last)
                count = max(1, min(self._settings.xread_count, READ_BYTES // max(1, largest)))
