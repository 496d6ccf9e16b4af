"""`DELIVERY_MODE=xread`: the old design, kept for comparison (the A/B benchmark).

Each watched job is followed by its own loop of blocking `XREAD` calls (`XREAD_BLOCK_MS`,
default 15 s, `XREAD_COUNT` entries at most), each on a connection of its own from a dedicated
pool whose socket timeout outlasts the block. An idle watched job therefore costs about
3600 / 15 = 240 commands an hour and one Redis connection for as long as it is watched; with
the seed's "before" settings (`XREAD_BLOCK_MS=100 XREAD_COUNT=10`) it polls ten times a second.

Catch-up on watch, `gone` and error reporting are the hub's, exactly as in `pubsub` mode, so
both modes give the same guarantees behind the same protocol. When the pool is full
(`XREAD_MAX_CONNECTIONS`), a new watch gets a `capacity` error and is retried with backoff; it
never hangs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as redis

from service.aio import stop_tasks
from service.config import Settings
from service.delivery.hub import Hub, HubDelivery
from service.keys import Keys
from service.model import stream_id
from service.redis_client import RedisFactory, backoff_s, map_redis_error
from service.stats import GatewayStats
from service.streams import EventReader

log = logging.getLogger(__name__)


class XreadDelivery(HubDelivery):
    mode = "xread"

    def __init__(
        self, settings: Settings, factory: RedisFactory, commands: redis.Redis, stats: GatewayStats
    ) -> None:
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._readers = factory.blocking(
            settings.xread_block_ms, max_connections=settings.xread_max_connections, wait=False
        )
        self.hub = Hub(
            EventReader(commands, self._keys, factory.breaker),
            stats,
            page_size=settings.catch_up_page_size,
            max_replay_events=settings.max_replay_events,
            server=factory.identity,
            on_first_watch=self._follow,
            on_last_unwatch=self._unfollow,
        )
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._catch_up: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._catch_up = asyncio.create_task(self.hub.run(), name="catch-up")

    async def stop(self) -> None:
        tasks = [*self._loops.values(), *([self._catch_up] if self._catch_up else [])]
        await stop_tasks(tasks)
        self._loops.clear()
        await self._readers.aclose()

    def ready(self) -> bool:
        return True  # nothing of its own to be down; /readyz also checks Redis itself

    def _follow(self, job: str) -> None:
        self._loops[job] = asyncio.create_task(self._read_loop(job), name=f"xread-{job}")

    def _unfollow(self, job: str) -> None:
        task = self._loops.pop(job, None)
        if task is not None:
            task.cancel()

    async def _read_loop(self, job: str) -> None:
        key = self._keys.events(job)
        block_ms, count = self._settings.xread_block_ms, self._settings.xread_count
        feed = self.hub.feeds.get(job)
        cursor = max((w.last_seq for w in feed.watches.values()), default=0) if feed else 0
        failures = 0
        while job in self.hub.feeds:
            try:
                reply: Any = await self._readers.xread({key: stream_id(cursor)}, count, block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = map_redis_error(e)
                if error is None:
                    log.exception("XREAD loop for job %s failed", job)
                    raise
                failures += 1
                self.hub.report([job], error)
                await asyncio.sleep(backoff_s(failures, base_s=0.1, cap_s=5.0))
                continue
            if failures:
                failures = 0
                self.hub.request_catch_up(job, "reconnect")
            for _, entries in reply or ():
                for _, fields in entries:
                    frame = fields[b"f"]
                    self.hub.publish(job, frame)
                cursor = max(cursor, int(entries[-1][0].split(b"-", 1)[0]))
