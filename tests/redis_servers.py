"""Private redis-server processes for tests: free loopback ports, own data dirs, stopped by PID.

The servers themselves live in `service.local_redis`, which the benchmarks share."""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis

from service.local_redis import RedisServer
from service.processes import free_port

__all__ = ["RedisServer", "command_calls", "free_port"]


async def command_calls(client: redis.Redis) -> int:
    """Commands the server has executed, all clients together (INFO commandstats); the INFO
    asking is not among them, but every earlier one is."""
    stats: Any = await client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())
