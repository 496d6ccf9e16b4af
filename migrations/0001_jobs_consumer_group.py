"""Create the jobs stream and the `workers` consumer group that reads it."""

from __future__ import annotations

import redis.asyncio as redis
from redis.exceptions import ResponseError

from service.keys import WORKERS_GROUP, Keys


async def up(client: redis.Redis, keys: Keys) -> None:
    try:
        # From id 0: jobs submitted before the group existed are still run.
        await client.xgroup_create(keys.jobs, WORKERS_GROUP, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
