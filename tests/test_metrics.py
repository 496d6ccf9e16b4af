"""Metrics: what a gateway and a worker export, at no Redis cost."""

from __future__ import annotations

from typing import Any

import httpx
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
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
