"""Redis faults while jobs stream to real clients: everything arrives exactly once, or the
client is told `gone`, and the service recovers by itself. Both delivery modes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from service.config import DELIVERY_MODES, Settings
from service.keys import Keys
from service.migrate import migrate, require_layout
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway, running_worker
from tests.redis_servers import RedisServer
from tests.test_metrics import samples
from tests.ws_client import assert_exact, connect, submit

KEYS = Keys()
pytestmark = pytest.mark.slow


@dataclass
class Stack:
    base: str
    settings: Settings
    server: RedisServer
    client: redis.Redis


@pytest.fixture(params=DELIVERY_MODES)
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    persistent = request.node.get_closest_marker("no_persistence") is None
    args = ("--appendonly", "yes", "--appendfsync", "always") if persistent else ()
    server = RedisServer(tmp_path / "redis", args=args)
    server.start()
    client = server.client()
    await migrate(client, KEYS, report=lambda _: None)
    settings = make_settings(server.url, delivery_mode=request.param, xread_block_ms=1000)
    try:
        async with running_worker(settings, concurrency=8), running_gateway(settings) as base:
            yield Stack(base, settings, server, client)
    finally:
        await client.aclose()
        server.stop()


def only_outage_errors(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    errors = [f for f in frames if f["type"] == "error"]
    assert all(e["code"] in ("busy", "unavailable", "capacity") for e in errors), errors
    return [f for f in frames if f["type"] == "event"]


async def test_redis_frozen_longer_than_the_socket_timeouts(stack: Stack) -> None:
    jobs = [await submit(stack.base, "count", {"n": 40, "interval_ms": 50}) for _ in range(3)]
    async with connect(stack.base) as ws:
        collector = await ws.watch_all(jobs, 90)
        await wait_for(lambda: _flowing(stack, jobs[0][0]), what="events to flow")
        assert stack.server.process is not None
        stack.server.process.send_signal(signal.SIGSTOP)
        try:
            # Frozen until the gateway itself says Redis does not answer (its readiness check
            # gives up after the 2 s socket timeout of the test settings): the fault fired.
            await wait_for(lambda: _not_ready(stack.base), timeout_s=30, what="the outage")
        finally:
            stack.server.process.send_signal(signal.SIGCONT)
        got = await collector
    for job, _ in jobs:
        assert_exact(only_outage_errors(got[job]), job, 40)


@pytest.mark.no_persistence
@pytest.mark.logs_errors  # provoked on purpose
async def test_redis_restarted_empty_ends_watches_with_gone(stack: Stack) -> None:
    jobs = [await submit(stack.base, "count", {"n": 200, "interval_ms": 50}) for _ in range(2)]
    async with connect(stack.base) as ws:
        collector = await ws.watch_all(jobs, 60)
        await wait_for(lambda: _flowing(stack, jobs[-1][0]), what="events to flow")
        stack.server.kill()
        stack.server.start()  # no persistence: every job, and the consumer group, is gone
        got = await collector
        await ws.send({"op": "ping"})
        assert (await ws.recv())["type"] == "pong"  # the socket itself is fine
    for job, _ in jobs:
        frames = got[job]
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "gone", frames[-3:]
        events = [f for f in frames if f["type"] == "event"]
        assert events, "events flowed before the restart"
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # The service heals itself: new jobs run end to end on the emptied Redis.
    job, token = await submit(stack.base, "count", {"n": 3})
    async with connect(stack.base) as ws:
        await ws.watch(job, token)
        after = await ws.events_until_terminal({job}, 30)
    assert_exact(only_outage_errors(after[job][1:]), job, 3)


async def test_script_cache_flushed_under_load(stack: Stack) -> None:
    jobs = [await submit(stack.base, "count", {"n": 300, "interval_ms": 2}) for _ in range(4)]
    async with connect(stack.base) as ws:
        collector = await ws.watch_all(jobs, 60)
        while not collector.done():
            await stack.client.script_flush()
            await asyncio.sleep(0.05)
        got = await collector
    for job, _ in jobs:
        assert_exact(only_outage_errors(got[job]), job, 300)


async def test_subscriber_past_its_output_buffer_limit(stack: Stack) -> None:
    if stack.settings.delivery_mode != "pubsub":
        pytest.skip("only pubsub mode has a subscriber connection")
    # A tiny pub/sub output buffer: bursts make Redis drop the subscriber, repeatedly.
    await stack.client.config_set("client-output-buffer-limit", "pubsub 32kb 16kb 1")
    jobs = [await submit(stack.base, "count", {"n": 400, "size": 200}) for _ in range(4)]
    async with connect(stack.base) as ws:
        got = await (await ws.watch_all(jobs, 90))
    for job, _ in jobs:
        assert_exact(only_outage_errors(got[job]), job, 400)
    # The fault fired: Redis dropped the subscriber, and the gateway re-subscribed (the last
    # drop may come with the last burst, so the re-subscription may follow the last event).
    async with httpx.AsyncClient(base_url=stack.base) as http:

        async def resubscribed() -> bool:
            found = samples((await http.get("/metrics")).text)
            return found[("resultcast_subscriber_reconnects_total", (("mode", "pubsub"),))] >= 1

        await wait_for(resubscribed, timeout_s=30, what="the gateway to re-subscribe")
    stats = await stack.client.info("stats")
    if "client_output_buffer_limit_disconnections" in stats:  # Redis 7.2+ counts them
        assert int(stats["client_output_buffer_limit_disconnections"]) >= 1


async def _flowing(stack: Stack, job: str) -> bool:
    return bool(await stack.client.xlen(KEYS.events(job)) >= 5)


async def _not_ready(base: str) -> bool:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        return (await http.get("/readyz")).status_code == 503


async def test_a_process_started_while_redis_loads_its_data_waits_for_it(tmp_path: Path) -> None:
    """After a restart Redis answers LOADING until its data set is read back (seconds for
    gigabytes). A gateway, worker or migrate started then used to exit with "cannot reach
    Redis"; the layout check now waits for the load to end."""
    server = RedisServer(
        tmp_path / "redis",
        args=("--enable-debug-command", "local", "--loading-process-events-interval-bytes", "1024"),
    )
    server.start()
    client = server.client()
    try:
        await migrate(client, KEYS, report=lambda _: None)
        # Enough data that loading it takes about a second or two.
        await client.execute_command("DEBUG", "POPULATE", 3_000_000, "filler", 64)
        await client.save()
    finally:
        await client.aclose()
    server.stop()
    server.launch()
    client = server.client()
    try:

        async def loading() -> bool:
            try:
                await client.exists(KEYS.layout)
            except redis.BusyLoadingError:
                return True
            except redis.ConnectionError:
                return False  # not listening yet
            raise AssertionError("Redis had finished loading before the check began")

        await wait_for(loading, timeout_s=30, what="Redis to answer LOADING")
        await require_layout(client, KEYS)  # waits, then finds the layout
        assert await client.dbsize() > 3_000_000
    finally:
        await client.aclose()
        server.stop()
