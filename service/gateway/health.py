"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import redis.asyncio as redis
from starlette.responses import JSONResponse, Response

from service.gateway.errors import error_response
from service.model import ErrorCode

READY_CACHE_S = 1.0
PING_TIMEOUT_S = 2.0

ReadyCheck = Callable[[], bool]


class Health:
    """Answers `/readyz` from a cached Redis PING, so probes cannot pile commands onto Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._checked_at = float("-inf")
        self._redis_ok = False
        self._lock = asyncio.Lock()
        self.extra_checks: list[tuple[str, ReadyCheck]] = []

    async def redis_ok(self) -> bool:
        async with self._lock:
            if time.monotonic() - self._checked_at > READY_CACHE_S:
                try:
                    self._redis_ok = bool(await asyncio.wait_for(self._ping(), PING_TIMEOUT_S))
                except Exception:
                    self._redis_ok = False
                    if isinstance(self._client, redis.RedisCluster):
                        # A node may be gone for good (failed over): ask the cluster anew,
                        # so the next check pings the primaries it has now.
                        with contextlib.suppress(Exception):
                            await self._client.nodes_manager.initialize()
                self._checked_at = time.monotonic()
            return self._redis_ok

    async def _ping(self) -> bool:
        if isinstance(self._client, redis.RedisCluster):
            replies = await self._client.ping(target_nodes=redis.RedisCluster.PRIMARIES)
            return all(replies.values()) if isinstance(replies, dict) else bool(replies)
        return bool(await self._client.ping())

    async def healthz(self, _request: object) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _request: object) -> Response:
        if not await self.redis_ok():
            return error_response(503, ErrorCode.UNAVAILABLE, "Redis is not answering")
        for name, check in self.extra_checks:
            if not check():
                return error_response(503, ErrorCode.UNAVAILABLE, f"{name} is not ready")
        return JSONResponse({"status": "ready"})
