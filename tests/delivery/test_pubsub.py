"""Pub/Sub delivery under the faults it exists to survive, and its idle cost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from service.keys import Keys
from service.migrate import migrate
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway, running_worker
from tests.redis_servers import RedisServer, command_calls
from tests.tcp_proxy import tcp_proxy
from tests.ws_client import assert_exact, connect, submit

KEYS = Keys()


@pytest.fixture
async def durable(tmp_path: Path) -> Any:
    server = RedisServer(
        tmp_path / "redis", args=("--appendonly", "yes", "--appendfsync", "always")
    )
    server.start()
    client = server.client()
    await migrate(client, KEYS, report=lambda _: None)
    yield server, client
    await client.aclose()
    server.stop()


async def pubsub_clients(client: redis.Redis) -> list[dict[str, Any]]:
    clients: Any = await client.client_list()
    return [c for c in clients if c.get("name") == "resultcast-gateway" and int(c["psub"]) > 0]


@pytest.mark.slow
async def test_killing_the_subscriber_repeatedly_loses_and_repeats_nothing(durable: Any) -> None:
    server, client = durable
    settings = make_settings(server.url)
    async with running_worker(settings, concurrency=8), running_gateway(settings) as base:
        jobs = [await submit(base, "count", {"n": 60, "interval_ms": 25}) for _ in range(4)]
        async with connect(base) as ws:
            collector = await ws.watch_all(jobs, 60)
            kills = 0
            while not collector.done() and kills < 8:
                await wait_for(lambda: pubsub_clients(client), what="a subscriber to kill")
                kills += int(await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
                await asyncio.sleep(0.15)
            got = await collector
    assert kills >= 4
    for job, _ in jobs:
        assert_exact(got[job][1:], job, 60)


@pytest.mark.slow
async def test_a_paused_then_restarted_redis_resumes_every_watch(durable: Any) -> None:
    server, client = durable
    settings = make_settings(server.url)
    async with running_worker(settings, concurrency=8), running_gateway(settings) as base:
        jobs = [await submit(base, "count", {"n": 40, "interval_ms": 30}) for _ in range(3)]
        async with connect(base) as ws:
            collector = await ws.watch_all(jobs, 60)
            await wait_for(
                lambda: _flowing(client, [job for job, _ in jobs]), what="events to flow"
            )
            await client.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            await asyncio.sleep(0.5)  # the fault: Redis answers nothing for this long
            server.kill()
            server.start()
            got = await collector
    for job, _ in jobs:
        events = [f for f in got[job] if f["type"] == "event"]
        assert all(f["code"] in ("busy", "unavailable") for f in got[job] if f["type"] == "error")
        assert_exact(events, job, 40)


@pytest.mark.slow
async def test_a_silently_dead_subscriber_is_found_by_the_probe(redis_server: RedisServer) -> None:
    client = redis_server.client()
    await migrate(client, KEYS, report=lambda _: None)
    async with tcp_proxy(redis_server.port) as proxy:
        # The gateway reaches Redis through the proxy; the worker directly.
        gateway_settings = make_settings(proxy.url, probe_after_s=0.5, probe_timeout_s=0.5)
        worker_settings = make_settings(redis_server.url)
        async with running_worker(worker_settings), running_gateway(gateway_settings) as base:
            job, token = await submit(base, "count", {"n": 30, "interval_ms": 100})
            async with connect(base) as ws:
                await ws.watch(job, token)
                assert (await ws.recv())["type"] == "watching"
                assert (await ws.recv())["seq"] == 1
                assert proxy.freeze() >= 2  # the subscriber and the command connection
                got = await ws.events_until_terminal({job}, timeout_s=30)
    await client.aclose()
    events = [f for f in got[job] if f["type"] == "event"]
    assert_exact(events, job, 30, first_seq=2)


async def test_idle_watchers_cost_no_redis_commands(redis_server: RedisServer) -> None:
    client = redis_server.client()
    await migrate(client, KEYS, report=lambda _: None)
    # No worker runs: the jobs stay queued and silent.
    settings = make_settings(redis_server.url, probe_after_s=600)
    async with running_gateway(settings) as base:
        for watchers in (10, 300):
            jobs = [await submit(base, "echo", {}) for _ in range(watchers // 10)]
            sockets = [connect(base) for _ in range(watchers // 10)]
            clients = [await s.__aenter__() for s in sockets]
            for ws in clients:
                for job, token in jobs[:10]:
                    await ws.watch(job, token)
            for ws in clients:
                for _ in range(min(10, len(jobs))):
                    assert (await ws.recv())["type"] == "watching"

            async def quiet() -> bool:  # every catch-up read is done
                before = await command_calls(client)
                await asyncio.sleep(0.3)
                return await command_calls(client) - before == 1  # only our own INFO

            await wait_for(quiet, what="the catch-ups to finish")
            before = await command_calls(client)
            await asyncio.sleep(2.0)  # a measured interval of idleness
            assert await command_calls(client) - before == 1, "only the INFO that measures it"
            conns: Any = await client.client_list()
            assert len([c for c in conns if c.get("name") == "resultcast-gateway"]) <= 3
            for s in sockets:
                await s.__aexit__(None, None, None)
    await client.aclose()


async def _flowing(client: Any, jobs: list[str]) -> bool:
    return all([await client.xlen(KEYS.events(job)) >= 3 for job in jobs])
