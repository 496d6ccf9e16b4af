"""`GET /admin/stats`: what a gateway holds live, behind ADMIN_KEY, at no Redis command."""

from __future__ import annotations

from typing import Any

import httpx
import redis.asyncio as redis

from service.config import Settings
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway, running_worker
from tests.test_metrics import samples
from tests.ws_client import connect, submit

ADMIN_KEY = "admin-key-for-tests"


async def test_no_admin_key_no_admin_view(settings: Settings, migrated: redis.Redis) -> None:
    async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
        reply = await http.get("/admin/stats", headers={"Authorization": "Bearer anything"})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"


async def test_a_wrong_or_missing_key_is_unauthorized(
    settings: Settings, migrated: redis.Redis
) -> None:
    keyed = make_settings(settings.redis_url, admin_key=ADMIN_KEY)
    async with running_gateway(keyed) as base, httpx.AsyncClient(base_url=base) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_KEY}):
            reply = await http.get("/admin/stats", headers=headers)
            assert reply.status_code == 401, headers
            assert reply.json()["error"]["code"] == "unauthorized"


async def test_the_admin_view_shows_what_is_live_at_no_redis_command(
    settings: Settings, migrated: redis.Redis
) -> None:
    keyed = make_settings(settings.redis_url, admin_key=ADMIN_KEY, probe_after_s=600)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        running_worker(keyed),
        running_gateway(keyed) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        job, token = await submit(base, "count", {"n": 600, "interval_ms": 50})
        async with connect(base) as ws:
            await ws.watch(job, token)
            await ws.recv()  # watching

            async def stats() -> Any:
                return (await http.get("/admin/stats", headers=auth)).json()

            found = await wait_for(
                lambda: _watched(stats(), job), what="the watch in the admin view"
            )
            assert found["connections"]["websocket"] == 1
            assert found["live"]["source"] == "pubsub" and found["live"]["connected"] is True
            assert found["redis"]["run_id"] and found["paused_watches"] == 0
            # The gateway counts every command it sends (the worker's go on meanwhile).
            before = await sent_by_gateway(http)
            for _ in range(20):
                assert (await http.get("/admin/stats", headers=auth)).status_code == 200
            assert await sent_by_gateway(http) == before


async def sent_by_gateway(http: httpx.AsyncClient) -> float:
    found = samples((await http.get("/metrics")).text)
    return sum(v for (name, _), v in found.items() if name == "resultcast_redis_commands_total")


async def _watched(pending: Any, job: str) -> Any:
    found = await pending
    busiest = found["busiest_jobs"]
    return found if found["watches"] == 1 and busiest and busiest[0]["job"] == job else None
