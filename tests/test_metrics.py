"""Metrics: what a gateway and a worker export, at no Redis cost."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.keys import Keys
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway, running_worker, service_process
from tests.redis_servers import RedisServer, command_calls, free_port
from tests.ws_client import assert_exact, connect, submit


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_gateway_metrics_cost_no_redis_command(
    settings: Settings, migrated: redis.Redis
) -> None:
    async with running_worker(settings), running_gateway(settings) as base:
        job, token = await submit(base, "count", {"n": 20})
        async with connect(base) as ws:
            await ws.watch(job, token)
            got = await ws.events_until_terminal({job})
            assert_exact(got[job][1:], job, 20)
            async with httpx.AsyncClient(base_url=base) as http:
                reply = await http.get("/metrics")
                again = await http.get("/metrics")
    # The gateway counts every command it sends: scraping sent none (the worker runs on, so
    # Redis's own count would move; the gateway's must not).
    sent = [
        sum(
            v
            for (name, _), v in samples(r.text).items()
            if name == "resultcast_redis_commands_total"
        )
        for r in (reply, again)
    ]
    assert sent[0] > 0 and sent[0] == sent[1], sent
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    found = samples(reply.text)
    mode = (("mode", "pubsub"),)
    assert found[("resultcast_sockets_open", mode)] == 1
    assert found[("resultcast_watches_active", mode)] == 0  # the watch ended with `done`
    assert found[("resultcast_events_delivered_total", mode)] == 21
    assert found[("resultcast_catch_ups_total", (("cause", "watch"), ("mode", "pubsub")))] == 1
    # One send in eight is timed: the watching frame and 21 events are 22 sends.
    assert found[("resultcast_delivery_latency_seconds_count", mode)] == 2
    assert found[("resultcast_delivery_ready", mode)] == 1
    assert found[("resultcast_asyncio_tasks", mode)] >= 2  # at least the socket and the hub
    assert found[("resultcast_redis_commands_total", (("command", "EVALSHA"),))] >= 1
    gateway_pubsub = (("purpose", "subscriber"), ("role", "gateway"))
    assert found[("resultcast_redis_connections", gateway_pubsub)] == 1


async def test_gateway_scrapes_do_not_touch_redis(
    settings: Settings, migrated: redis.Redis
) -> None:
    settings = make_settings(settings.redis_url, probe_after_s=600)
    async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
        await http.get("/metrics")
        before = await command_calls(migrated)
        for _ in range(20):
            assert (await http.get("/metrics")).status_code == 200
        assert await command_calls(migrated) - before == 1  # the INFO that measured it


async def test_worker_exports_jobs_and_queue_depth(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    port = free_port()
    env = {
        "WORKER_METRICS_PORT": str(port),
        "MAINTENANCE_INTERVAL_S": "0.2",
        "WORKER_BLOCK_MS": "200",
    }
    settings = make_settings(redis_server.url)
    from tests.test_worker import finished
    from tests.test_worker import submit as submit_direct

    with service_process(redis_server.url, "worker", **env):
        job = await submit_direct(settings, "count", {"n": 3})
        await wait_for(lambda: finished(migrated, job), what="the job")

        async def scrape() -> dict[Any, float] | None:
            try:
                async with httpx.AsyncClient() as http:
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:
                return None
            found = samples(text)
            # Queue depth is sampled every maintenance round: wait for one after the ack.
            settled = found.get(("resultcast_jobs_pending", (("group", "workers"),))) == 0
            return found if settled and found.get(("resultcast_jobs_waiting", ())) == 0 else None

        found = await wait_for(scrape, what="worker metrics with an empty queue")
    assert found[("resultcast_jobs_finished_total", (("outcome", "done"),))] == 1
    assert found[("resultcast_events_written_total", ())] == 4
    assert found[("resultcast_jobs_waiting", ())] == 0
    assert found[("resultcast_jobs_pending", (("group", "workers"),))] == 0


async def test_a_dropped_subscriber_is_counted_and_its_jobs_caught_up(
    settings: Settings, migrated: redis.Redis
) -> None:
    """`subscriber_reconnects_total` and `catch_ups{cause="reconnect"}` move when the Pub/Sub
    connection is really dropped (CLIENT KILL), and the watch still gets every event."""
    async with running_worker(settings), running_gateway(settings) as base:
        job, token = await submit(base, "count", {"n": 30, "interval_ms": 20})
        async with connect(base) as ws, httpx.AsyncClient(base_url=base) as http:
            await ws.watch(job, token)
            collecting = asyncio.create_task(ws.events_until_terminal({job}))
            await wait_for(lambda: _has_events(migrated, job), what="events to flow")
            killed = await migrated.client_kill_filter(_type="pubsub")
            assert int(killed) == 1

            async def counted() -> dict[Any, float] | None:
                found = samples((await http.get("/metrics")).text)
                return found if found[(_RECONNECTS, (("mode", "pubsub"),))] >= 1 else None

            found = await wait_for(counted, what="the reconnect to be counted")
            got = await collecting
    assert_exact(got[job][1:], job, 30)
    assert found[("resultcast_catch_ups_total", (("cause", "reconnect"), ("mode", "pubsub")))] >= 1


_RECONNECTS = "resultcast_subscriber_reconnects_total"


async def _has_events(client: redis.Redis, job: str) -> bool:
    return bool(await client.xlen(Keys().events(job)) >= 3)


async def test_xread_mode_labels_its_figures(settings: Settings, migrated: redis.Redis) -> None:
    settings = make_settings(settings.redis_url, delivery_mode="xread", xread_block_ms=200)
    async with running_worker(settings), running_gateway(settings) as base:
        job, token = await submit(base, "count", {"n": 5})
        async with connect(base) as ws:
            await ws.watch(job, token)
            await ws.events_until_terminal({job})
            async with httpx.AsyncClient(base_url=base) as http:
                found = samples((await http.get("/metrics")).text)
    xread = (("mode", "xread"),)
    assert found[("resultcast_events_delivered_total", xread)] == 6
    assert found[("resultcast_sockets_open", xread)] == 1
    assert found[("resultcast_streams_open", (("mode", "xread"), ("transport", "ws")))] == 1
    assert not any(("mode", "pubsub") in labels for _, labels in found)


async def test_the_oldest_pending_job_has_an_age(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    """`oldest_pending_age_seconds`: a job taken and still running has an age that grows."""
    port = free_port()
    env = {"WORKER_METRICS_PORT": str(port), "MAINTENANCE_INTERVAL_S": "0.2"}
    settings = make_settings(redis_server.url)
    from tests.test_worker import submit as submit_direct

    with service_process(redis_server.url, "worker", **env):
        await submit_direct(settings, "sleep", {"seconds": 30})

        async def aged() -> float | None:
            try:
                async with httpx.AsyncClient() as http:
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:
                return None
            age = samples(text).get(("resultcast_oldest_pending_age_seconds", ()), 0.0)
            return age if age >= 0.5 else None

        assert await wait_for(aged, timeout_s=20, what="a pending job with an age") >= 0.5


async def test_each_catch_up_cause_is_counted_when_it_happens(
    settings: Settings, migrated: redis.Redis
) -> None:
    """`resume` (a watch with `after`), `large` (an event over the publish limit, announced by
    position) and `gap` (a frame on a job's channel the gateway cannot use) each move their
    own `catch_ups{cause}`, and every watch still gets every event once."""
    async with (
        running_worker(settings),
        running_gateway(settings) as base,
        connect(base) as ws,
        httpx.AsyncClient(base_url=base) as http,
    ):

        async def causes() -> dict[str, float]:
            found = samples((await http.get("/metrics")).text)
            return {
                dict(labels)["cause"]: value
                for (name, labels), value in found.items()
                if name == "resultcast_catch_ups_total"
            }

        job, token = await submit(base, "count", {"n": 4})
        await ws.watch(job, token)
        assert_exact((await ws.events_until_terminal({job}))[job][1:], job, 4)
        await ws.watch(job, token, after="2-0")
        assert_exact((await ws.events_until_terminal({job}))[job][1:], job, 4, first_seq=3)
        assert (await causes()).get("resume") == 1

        large, large_token = await submit(
            base, "count", {"n": 3, "size": 70_000, "interval_ms": 100}
        )
        await ws.watch(large, large_token)
        got = (await ws.events_until_terminal({large}))[large][1:]
        assert [f["seq"] for f in got] == [1, 2, 3, 4]
        assert all(len(f["data"]["pad"]) == 70_000 for f in got[:3])
        assert (await causes()).get("large", 0) >= 1

        slow, slow_token = await submit(base, "count", {"n": 30, "interval_ms": 20})
        await ws.watch(slow, slow_token)
        collecting = asyncio.create_task(ws.events_until_terminal({slow}))
        await wait_for(lambda: _has_events(migrated, slow), what="events to flow")
        before = (await causes()).get("gap", 0)
        await migrated.publish(Keys().channel(slow), b"not a frame")
        await wait_for(lambda: _counted(causes, "gap", before + 1), what="the gap to be counted")
        assert_exact((await collecting)[slow][1:], slow, 30)


async def _counted(causes: Any, cause: str, at_least: float) -> bool:
    return bool((await causes()).get(cause, 0) >= at_least)
