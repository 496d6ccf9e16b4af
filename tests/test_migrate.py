"""Migrations: ordered, exactly once, one migrator at a time."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as redis

from service.keys import WORKERS_GROUP, Keys
from service.migrate import MigrationError, expected_layout, migrate, require_layout, status
from service.processes import SERVICE
from tests.conftest import ROOT, make_settings, service_env
from tests.processes import running_gateway
from tests.redis_servers import RedisServer

KEYS = Keys()

COUNTING = '''"""Count how often this migration ran (it is not idempotent on purpose)."""
import asyncio
import subprocess

async def up(client, keys):
    if {wait_for_rival}:
        # Hold the lock until another migrator has tried to take it (its SET NX), so the
        # two really run at the same time; a bounded wait, on a condition.
        async def set_calls():
            return (await client.info("commandstats")).get("cmdstat_set", {{}}).get("calls", 0)

        before = await set_calls()
        for _ in range(500):
            if await set_calls() > before:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("no other migrator tried to take the lock")
    await client.incr("applied:{version}")
'''


def write_migrations(directory: Path, versions: list[int], *, racing: bool = False) -> Path:
    """Migrations that count their runs; `racing` ones wait for a second migrator to try."""
    directory.mkdir(exist_ok=True)
    for version in versions:
        (directory / f"{version:04d}_step_{version}.py").write_text(
            COUNTING.format(version=version, wait_for_rival=racing)
        )
    return directory


async def test_two_migrators_at_once_apply_each_migration_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    directory = write_migrations(tmp_path / "m", [1, 2, 3], racing=True)
    clients = [redis_server.client(), redis_server.client()]
    lines: list[str] = []
    results = await asyncio.gather(
        *(migrate(c, KEYS, directory=directory, report=lines.append) for c in clients)
    )
    assert sorted(results, key=len) == [[], [1, 2, 3]]
    for version in (1, 2, 3):
        assert await clients[0].get(f"applied:{version}") == b"1"
    assert await clients[0].get(KEYS.layout) == b"3"
    assert await clients[0].exists(KEYS.migrations_lock) == 0

    # A later run is a no-op; a new migration file is applied on its own.
    assert await migrate(clients[0], KEYS, directory=directory, report=lines.append) == []
    write_migrations(directory, [4])
    assert await migrate(clients[0], KEYS, directory=directory, report=lines.append) == [4]
    assert await clients[0].get("applied:1") == b"1"
    assert await clients[0].get(KEYS.layout) == b"4"
    for client in clients:
        await client.aclose()


async def test_dry_run_and_status_change_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "m", [1, 2])
    client = redis_server.client()
    lines: list[str] = []
    assert await migrate(client, KEYS, directory=directory, dry_run=True, report=lines.append) == [
        1,
        2,
    ]
    description = "Count how often this migration ran (it is not idempotent on purpose)."
    assert lines == [
        f"would apply 0001 step_1: {description}",
        f"would apply 0002 step_2: {description}",
    ]
    assert await client.keys("*") == []
    assert [
        (m.version, applied) for m, applied in await status(client, KEYS, directory=directory)
    ] == [
        (1, False),
        (2, False),
    ]
    await client.aclose()


async def test_code_refuses_an_older_layout(rclient: redis.Redis, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "m", [1, 2])
    with pytest.raises(MigrationError, match="layout is at version 0 but this code needs 2"):
        await require_layout(rclient, KEYS, directory)
    await migrate(rclient, KEYS, directory=directory, report=lambda _: None)
    await require_layout(rclient, KEYS, directory)


async def test_shipped_migrations_create_the_consumer_group(rclient: redis.Redis) -> None:
    applied = await migrate(rclient, KEYS, report=lambda _: None)
    assert applied == list(range(1, expected_layout() + 1))
    groups = await rclient.xinfo_groups(KEYS.jobs)
    assert [g["name"] for g in groups] == [WORKERS_GROUP.encode()]
    await require_layout(rclient, KEYS)


@pytest.mark.parametrize("command", ["worker", "gateway"])
def test_processes_refuse_to_start_on_an_old_layout(
    redis_server: RedisServer, command: str
) -> None:
    result = subprocess.run(
        [*SERVICE, command],
        cwd=ROOT,
        env=service_env(redis_server.url),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 3
    assert "run `python -m service migrate` first" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_gateway_does_not_start_on_an_unmigrated_redis(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(RuntimeError, match="failed to start"):
        async with running_gateway(make_settings(redis_server.url)):
            pass
    assert any("run `python -m service migrate` first" in r.getMessage() for r in caplog.records)
