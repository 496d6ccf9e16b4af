"""A named lease in Redis: held by one holder at a time, for a while unless renewed.

Taken with `SET key token NX PX ttl`; renewed and released only by its holder, through a
script that compares the token first (`scripts/lease.lua`), so a holder that stalled past
its lease can never renew or delete another's. Used for the maintenance lease (one holder
per deployment), a producer's writer lease on a job (one writer at a time) and the
migrations lock (one migrator at a time).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

import redis.asyncio as redis

from service.backoff import retry_delay_s
from service.redis_client import retrying
from service.scripts import LEASE


class Lease:
    """One holder's claim on `key`, for `ttl_s` at a time."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float, holder: str = "") -> None:
        self.key = key
        self._client = client
        self._ttl_ms = int(ttl_s * 1000)
        # Readable, so an operator can see who holds it; random, so no two holders collide.
        self.token = f"{holder}/{secrets.token_hex(8)}" if holder else secrets.token_hex(16)
        self.held = False

    async def take(self) -> bool:
        """Take the lease if nobody holds it; whether this holder has it now."""
        self.held = bool(await self._client.set(self.key, self.token, nx=True, px=self._ttl_ms))
        return self.held

    async def take_within(self, wait_s: float, busy: Callable[[], Exception]) -> None:
        """Take the lease, waiting up to `wait_s` for its holder to let go; else raise
        `busy()`."""
        deadline = time.monotonic() + wait_s
        attempt = 0
        while not await retrying(self.take):  # a Redis blip is not a busy lease
            left = deadline - time.monotonic()
            if left <= 0:
                raise busy()
            attempt += 1
            await asyncio.sleep(min(left, retry_delay_s(attempt, base_s=0.05, cap_s=1.0)))

    async def renew(self) -> bool:
        """Extend the lease by its time to live; False (and not held) if it was lost."""
        self.held = bool(await LEASE(self._client, [self.key], [self.token, self._ttl_ms]))
        return self.held

    async def release(self) -> None:
        """Let go of the lease, if this holder still has it."""
        if self.held:
            self.held = False
            await LEASE(self._client, [self.key], [self.token])
