"""The Redis circuit breaker: opens on repeated failures, fails fast, closes by itself."""

from __future__ import annotations

import time

import httpx
import redis.asyncio as redis

from service.breaker import BreakerState, CircuitBreaker
from service.config import Settings
from tests.conftest import wait_for
from tests.processes import running_gateway
from tests.redis_servers import RedisServer
from tests.test_metrics import samples


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # read through a call, so type narrowing does not stick across calls


def test_the_state_machine() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_s=0.05, max_open_s=0.2)
    for _ in range(2):
        breaker.failure()
    assert state(breaker) is BreakerState.CLOSED and breaker.allow()
    breaker.failure()
    assert state(breaker) is BreakerState.OPEN and not breaker.allow()
    deadline = time.monotonic() + 5
    while not breaker.allow():  # after open_s, exactly one probe may go
        assert time.monotonic() < deadline
    assert state(breaker) is BreakerState.HALF_OPEN and not breaker.allow()
    breaker.failure()  # the probe failed: open again, for longer
    assert state(breaker) is BreakerState.OPEN and breaker.opened == 2
    while not breaker.allow():
        assert time.monotonic() < deadline
    breaker.success()
    assert state(breaker) is BreakerState.CLOSED and breaker.failures == 0 and breaker.allow()


async def test_the_gateway_fails_fast_while_redis_is_down_and_recovers(
    redis_server: RedisServer, settings: Settings, migrated: redis.Redis
) -> None:
    async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
        job = {"kind": "echo", "payload": {}}
        assert (await http.post("/jobs", json=job)).status_code == 202
        redis_server.stop()

        async def circuit_open() -> bool:
            reply = await http.post("/jobs", json=job)
            assert reply.status_code == 503 and reply.json()["error"]["code"] == "unavailable"
            state = samples((await http.get("/metrics")).text)[
                ("resultcast_redis_circuit_state", ())
            ]
            return state != 0

        await wait_for(circuit_open, what="the circuit to open")
        assert (await http.get("/readyz")).status_code == 503
        redis_server.start()

        async def accepted() -> bool:
            return (await http.post("/jobs", json=job)).status_code == 202

        await wait_for(accepted, what="submissions to work again")
        found = samples((await http.get("/metrics")).text)
        assert found[("resultcast_redis_circuit_state", ())] == 0
        assert found[("resultcast_redis_circuit_opened_total", ())] >= 1
        await wait_for(lambda: _ready(http), what="/readyz 200 again")


async def _ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/readyz")).status_code == 200
