"""Versioned changes to the Redis layout, applied in order, exactly once each.

A migration is a file `migrations/NNNN_name.py` with a docstring (what it changes) and
`async def up(client, keys)`. `migrate` takes a lock so two migrators never run at once,
records each version in a hash when it has been applied, and keeps the highest applied version
as the layout version. Gateways and workers refuse to start while the layout is older than the
newest migration they ship with.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError

from service.keys import WORKERS_GROUP, Keys
from service.lease import Lease
from service.redis_client import wait_until_loaded

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.py")
LOCK_TTL_S = 120.0
LOCK_WAIT_S = 150.0


class MigrationError(Exception):
    """The layout cannot be brought up to date, or is older than this code needs."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def description(self) -> str:
        return (self._module().__doc__ or self.name).strip().splitlines()[0]

    def _module(self) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"_rc_migration_{self.version}", self.path)
        if spec is None or spec.loader is None:
            raise MigrationError(f"cannot load migration {self.path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    @property
    def up(self) -> Callable[[redis.Redis, Keys], Awaitable[None]]:
        up = getattr(self._module(), "up", None)
        if not callable(up):
            raise MigrationError(f"migration {self.path.name} has no `async def up(client, keys)`")
        return up  # type: ignore[no-any-return]


def migrations_dir() -> Path:
    """`MIGRATIONS_DIR`, else the copy inside an installed wheel, else the repository's."""
    if configured := os.environ.get("MIGRATIONS_DIR"):
        return Path(configured)
    package = Path(__file__).resolve().parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("no migrations directory found (set MIGRATIONS_DIR)")


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.iterdir()):
        if match := _FILE_RE.fullmatch(path.name):
            found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version in {directory}")
    return found


def expected_layout(directory: Path | None = None) -> int:
    return max((m.version for m in discover(directory)), default=0)


async def applied_versions(client: redis.Redis, keys: Keys) -> set[int]:
    return {int(v) for v in await client.hkeys(keys.migrations)}


async def require_layout(client: redis.Redis, keys: Keys, directory: Path | None = None) -> None:
    """Refuse to run against a Redis whose layout is older than this code expects (after
    waiting, bounded, for a Redis that is loading its data after a restart)."""
    await wait_until_loaded(client, keys.layout, "checking the Redis layout")
    expected = expected_layout(directory)
    raw = await client.get(keys.layout)
    current = int(raw) if raw else 0
    if current < expected:
        raise MigrationError(
            f"the Redis layout is at version {current} but this code needs {expected}: "
            "run `python -m service migrate` first"
        )
    for stream in keys.job_stream_keys:
        if not await _has_workers_group(client, stream):
            raise MigrationError(
                f"the job stream {stream} has no consumer group (JOB_STREAMS grew?): "
                "run `python -m service migrate` with the same JOB_STREAMS first"
            )


async def _has_workers_group(client: redis.Redis, stream: str) -> bool:
    try:
        groups: Any = await client.xinfo_groups(stream)
    except ResponseError as e:  # no such key
        if "no such key" in str(e).lower():
            return False
        raise
    return any(g["name"] in (WORKERS_GROUP, WORKERS_GROUP.encode()) for g in groups)


async def ensure_job_streams(client: redis.Redis, keys: Keys) -> list[str]:
    """Every stream of job intake (JOB_STREAMS) with its `workers` group; returns those made.

    Idempotent, and run by every `migrate`: raising JOB_STREAMS needs no new migration file.
    """
    made = []
    for stream in keys.job_stream_keys:
        try:
            # From id 0: jobs submitted before the group existed are still run.
            await client.xgroup_create(stream, WORKERS_GROUP, id="0", mkstream=True)
            made.append(stream)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
    return made


async def migrate(
    client: redis.Redis,
    keys: Keys,
    *,
    directory: Path | None = None,
    dry_run: bool = False,
    report: Callable[[str], None] = print,
) -> list[int]:
    """Apply pending migrations in order; returns the versions applied (or, dry, pending)."""
    migrations = discover(directory)
    lock = Lease(client, keys.migrations_lock, LOCK_TTL_S, "migrate")
    await lock.take_within(
        LOCK_WAIT_S, lambda: MigrationError("another migrator has held the lock for too long")
    )
    try:
        done = await applied_versions(client, keys)
        pending = [m for m in migrations if m.version not in done]
        if not pending:
            report("migrations: nothing to apply, the layout is up to date")
        for migration in pending:
            label = f"{migration.version:04d} {migration.name}: {migration.description}"
            if dry_run:
                report(f"would apply {label}")
                continue
            report(f"applying {label}")
            await migration.up(client, keys)
            # Two keys of different slots on a Redis Cluster: no transaction, but the layout
            # version is written after the record, and set again by every run (below).
            await client.hset(
                keys.migrations, str(migration.version), str(time.time_ns() // 1_000_000)
            )
            await client.set(keys.layout, max(done | {migration.version}))
            done.add(migration.version)
        if done and not dry_run:
            await client.set(keys.layout, max(done))
            for stream in await ensure_job_streams(client, keys):
                report(f"created the job stream {stream} and its consumer group")
        return [m.version for m in pending]
    finally:
        await lock.release()


async def status(
    client: redis.Redis, keys: Keys, *, directory: Path | None = None
) -> list[tuple[Migration, bool]]:
    done = await applied_versions(client, keys)
    return [(m, m.version in done) for m in discover(directory)]
