"""The `migrate` command: apply, preview or list the Redis layout migrations."""

from __future__ import annotations

from service.config import Settings
from service.keys import Keys
from service.migrate import migrate, status
from service.redis_client import RedisFactory, redis_errors, wait_until_loaded


async def run_migrate(
    settings: Settings, *, status_only: bool = False, dry_run: bool = False
) -> int:
    keys = Keys(settings.key_prefix, settings.job_streams)
    client = RedisFactory(settings, "migrate").commands()
    try:
        with redis_errors("migrate"):
            await wait_until_loaded(client, keys.layout, "migrate")
            if status_only:
                for migration, applied in await status(client, keys):
                    mark = "applied" if applied else "pending"
                    print(
                        f"{migration.version:04d} {migration.name:<32} {mark:<8} "
                        f"{migration.description}"
                    )
                return 0
            await migrate(client, keys, dry_run=dry_run)
        return 0
    finally:
        await client.aclose()
