"""Gateway processes killed under clients, and clients that misbehave."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
import redis.asyncio as redis

from service.config import Settings
from service.keys import WORKERS_GROUP, Keys
from tests.conftest import wait_for
from tests.processes import (
    gateway_process,
    ready,
    running_gateway,
    running_worker,
    service_process,
)
from tests.redis_servers import RedisServer, free_port
from tests.test_worker import events, finished, nothing_pending
from tests.test_worker import submit as submit_direct
from tests.ws_client import assert_exact, connect, submit

KEYS = Keys()

pytestmark = pytest.mark.slow


async def test_a_killed_gateway_s_clients_resume_on_another(
    redis_server: RedisServer, settings: Settings, migrated: redis.Redis
) -> None:
    port_a, port_b = free_port(), free_port()
    base_a, base_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    async with running_worker(settings):
        with (
            gateway_process(redis_server.url, port_a) as gateway_a,
            gateway_process(redis_server.url, port_b),
        ):
            await wait_for(lambda: ready(base_a), what="gateway A")
            await wait_for(lambda: ready(base_b), what="gateway B")
            jobs = [await submit(base_a, "count", {"n": 40, "interval_ms": 40}) for _ in range(3)]
            seen: dict[str, list[dict[str, Any]]] = {job: [] for job, _ in jobs}
            async with connect(base_a) as ws:
                for job, token in jobs:
                    await ws.watch(job, token)
                while sum(len(v) for v in seen.values()) < 10:
                    frame = await ws.recv()
                    if frame["type"] == "event":
                        seen[frame["job"]].append(frame)
                gateway_a.send_signal(signal.SIGKILL)
                gateway_a.wait()
            # Resume every job on gateway B from the last id seen on A.
            async with connect(base_b) as ws:
                for job, token in jobs:
                    after = seen[job][-1]["id"] if seen[job] else None
                    await ws.watch(job, token, after=after)
                got = await ws.events_until_terminal({job for job, _ in jobs}, 60)
            with gateway_process(redis_server.url, port_a):  # A comes back and serves again
                await wait_for(lambda: ready(base_a), what="gateway A restarted")
                job, token = jobs[0]
                async with connect(base_a) as ws:
                    await ws.watch(job, token)
                    replay = await ws.events_until_terminal({job})
    for job, _ in jobs:
        events = seen[job] + [f for f in got[job] if f["type"] == "event"]
        assert_exact(events, job, 40)
    assert_exact(replay[jobs[0][0]][1:], jobs[0][0], 40)


async def test_misbehaving_clients_do_not_affect_others(
    settings: Settings, migrated: redis.Redis
) -> None:
    async with running_worker(settings), running_gateway(settings) as base:
        job, token = await submit(base, "count", {"n": 60, "interval_ms": 20})
        async with connect(base) as greedy, connect(base) as noisy, connect(base) as good:
            await good.watch(job, token)
            # One client asks for 1,000 watches: 100 are accepted, the rest refused.
            for _ in range(1000):
                await greedy.watch(job, token + "x")  # unauthorized: refused before the limit
            ghosts = [await submit(base, "sleep", {"seconds": 30}) for _ in range(101)]
            for ghost, ghost_token in ghosts:
                await greedy.watch(ghost, ghost_token)

            # Another sends frames as fast as it can: pings, each answered.
            async def flood() -> int:
                for _ in range(10_000):
                    await noisy.send({"op": "ping"})
                pongs = 0
                while pongs < 10_000:
                    if (await noisy.recv())["type"] == "pong":
                        pongs += 1
                return pongs

            flooding = asyncio.create_task(flood())
            got = await good.events_until_terminal({job}, 60)
            assert await flooding == 10_000
            replies = [await greedy.recv() for _ in range(1000 + 101)]
    assert_exact(got[job][1:], job, 60)
    codes = [r.get("code") for r in replies]
    assert codes.count("unauthorized") == 1000
    assert codes.count("too_many_watches") == 1
    assert sum(1 for r in replies if r["type"] == "watching") == 100


async def test_a_worker_killed_between_a_job_s_end_and_its_ack(
    redis_server: RedisServer, settings: Settings, migrated: redis.Redis
) -> None:
    """The terminal event is durable but the worker dies before its XACK (here its Redis user
    may not XACK, so it retries until it is SIGKILLed). Another worker claims the job once it
    has been idle for JOB_VISIBILITY_S, finds it finished and only acknowledges it: the job
    keeps one terminal event and is not run again."""
    rules = ["on", ">no-ack-pw", "~*", "&*", "+@all", "-xack"]
    await migrated.execute_command("ACL", "SETUSER", "noack", *rules)
    no_ack_url = f"redis://noack:no-ack-pw@127.0.0.1:{redis_server.port}/0"
    env = {"JOB_VISIBILITY_S": "1", "WORKER_BLOCK_MS": "200"}
    with service_process(no_ack_url, "worker", **env) as first:
        job = await submit_direct(settings, "count", {"n": 5})
        await wait_for(lambda: finished(migrated, job), what="the job's terminal event")
        written = await events(migrated, job)
        pending = await migrated.xpending(KEYS.jobs, WORKERS_GROUP)
        assert int(pending["pending"]) == 1  # finished, not acknowledged
        first.send_signal(signal.SIGKILL)
        first.wait()
    with service_process(redis_server.url, "worker", **env):
        await wait_for(lambda: nothing_pending(migrated), what="the job to be acknowledged")
    assert await events(migrated, job) == written
    assert [e["seq"] for e in written] == [1, 2, 3, 4, 5, 6]
    assert [e["event"] for e in written].count("done") == 1
    meta = await migrated.hgetall(KEYS.meta(job))
    assert meta[b"status"] == b"done"
