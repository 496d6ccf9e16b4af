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
from service.backoff import reconnect_delay_s
from service.codec import ENTRY_FIELD
from service.config import Settings
from service.delivery.base import CatchUpCause, LiveSink
from service.delivery.supervise import restart_forever
from service.keys import Keys
from service.model import RedisAtCapacity, stream_id
from service.redis_client import (
    BLOCK_MARGIN_S,
    CAPACITY_MESSAGE,
    RedisFactory,
    map_redis_error,
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
        self._crashed: set[str] = set()  # jobs whose loop is backing off after a failure
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

    def follow(self, job: str, after_seq: int) -> None:
        self._cursors[job] = after_seq
        self._loops[job] = asyncio.create_task(
            restart_forever(
                f"the XREAD loop of job {job}",
                lambda: self._read_loop(job),
                on_crash=lambda _e: self._crashed_loop(job),
                on_restart=lambda: self._restarted(job),
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

    def _crashed_loop(self, job: str) -> None:
        if job in self._loops:  # a loop that outlived its unfollow is not a job's outage
            self._crashed.add(job)

    def _still_followed(self, job: str) -> None:
        """End a loop whose job was unfollowed, even if its cancellation was swallowed (a
        redis-py read can turn one into an error on Python 3.11) or the job followed anew."""
        if self._loops.get(job) is not asyncio.current_task():
            raise asyncio.CancelledError

    def _restarted(self, job: str) -> None:
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

    async def _read_loop(self, job: str) -> None:
        key = self._keys.events(job)
        failures = 0
        while True:
            self._still_followed(job)
            if self._cluster is not None and failures:
                # Where does the job live now? (If the cluster cannot say yet, the next read
                # fails and reports it, and this is tried again after a back-off.)
                with contextlib.suppress(Exception):
                    await self._cluster.nodes_manager.initialize()
            try:
                reader, own = await self._reader_of(key)
            except Exception as e:
                error = map_redis_error(e)
                if error is None or self._sink is None:
                    raise
                failures += 1
                self._sink.report([job], error)
                await asyncio.sleep(reconnect_delay_s(failures))
                continue
            try:
                failures = await self._read(job, key, reader, failures)
            finally:
                if own:
                    self._node_readers -= 1
                    await reader.aclose()

    async def _read(self, job: str, key: str, reader: redis.Redis, failures: int) -> int:
        """Read until cancelled; on a cluster, return after a failure (to find the node)."""
        sink = self._sink
        assert sink is not None, "started before reading"
        block_ms, count = self._settings.xread_block_ms, self._settings.xread_count
        while True:
            self._still_followed(job)
            try:
                reply: Any = await reader.xread(
                    {key: stream_id(self._cursors[job])}, count, block_ms
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = map_redis_error(e)
                if error is None:
                    raise  # not Redis trouble: the supervisor logs it and restarts the loop
                failures += 1
                sink.report([job], error)
                await asyncio.sleep(reconnect_delay_s(failures))
                if self._cluster is not None:
                    return failures  # the job may live elsewhere now
                continue
            self._still_followed(job)
            if failures:
                failures = 0
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
