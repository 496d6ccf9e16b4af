"""XREAD mode's own limits: its connection pool refuses clearly and recovers by itself."""

from __future__ import annotations

from pathlib import Path

from service.keys import Keys
from service.migrate import migrate
from tests.conftest import make_settings
from tests.processes import running_gateway, running_worker
from tests.redis_servers import RedisServer
from tests.ws_client import assert_exact, connect, submit

KEYS = Keys()


async def test_a_full_pool_answers_capacity_and_the_watch_goes_on(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = server.client()
    await migrate(client, KEYS, report=lambda _: None)
    settings = make_settings(
        server.url, delivery_mode="xread", xread_max_connections=2, xread_block_ms=200
    )
    try:
        async with running_worker(settings), running_gateway(settings) as base:
            long_jobs = [
                await submit(base, "count", {"n": 10, "interval_ms": 100}) for _ in range(2)
            ]
            third, third_token = await submit(base, "count", {"n": 3, "interval_ms": 600})
            async with connect(base) as ws:
                for job, token in [*long_jobs, (third, third_token)]:
                    await ws.watch(job, token)
                jobs = {job for job, _ in long_jobs} | {third}
                got = await ws.events_until_terminal(jobs, timeout_s=30)
    finally:
        await client.aclose()
        server.stop()
    # Three XREAD loops share two connections: whichever loop finds the pool full tells its
    # client `capacity` (never a hang), retries, and every event still arrives exactly once.
    errors = [f for frames in got.values() for f in frames if f["type"] == "error"]
    assert errors, "the third loop should have found the pool full"
    assert {e["code"] for e in errors} == {"capacity"}
    assert all("capacity" in e["message"] for e in errors)
    for job, _ in long_jobs:
        assert_exact([f for f in got[job] if f["type"] == "event"], job, 10)
    assert_exact([f for f in got[third] if f["type"] == "event"], third, 3)
