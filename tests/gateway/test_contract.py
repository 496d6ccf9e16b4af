"""The WebSocket contract, end to end: real Redis, real workers, real uvicorn, real clients.

Every case runs against both delivery modes: they must be indistinguishable to a client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from service import tokens
from service.config import DELIVERY_MODES, Settings
from service.keys import Keys
from service.migrate import migrate
from tests.conftest import make_settings
from tests.processes import running_gateway, running_worker
from tests.redis_servers import RedisServer
from tests.ws_client import assert_exact, connect, submit

KEYS = Keys()
MODES = DELIVERY_MODES


@dataclass
class Stack:
    base: str
    settings: Settings
    server: RedisServer
    client: redis.Redis

    async def job(self, kind: str = "count", **payload: Any) -> tuple[str, str]:
        return await submit(self.base, kind, payload)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def stack(mode: str, tmp_path: Path) -> AsyncIterator[Stack]:
    server = RedisServer(
        tmp_path / "redis", args=("--appendonly", "yes", "--appendfsync", "always")
    )
    server.start()
    client = server.client()
    try:
        await migrate(client, KEYS, report=lambda _: None)
        settings = make_settings(server.url, delivery_mode=mode, max_watches_per_socket=5)
        async with running_worker(settings, concurrency=8), running_gateway(settings) as base:
            yield Stack(base, settings, server, client)
    finally:
        await client.aclose()
        server.stop()


async def test_many_concurrent_watches_get_every_event_once_in_order(stack: Stack) -> None:
    jobs = [await stack.job(n=40, interval_ms=5) for _ in range(6)]

    async def one_socket(watched: list[tuple[str, str]]) -> dict[str, list[dict[str, Any]]]:
        async with connect(stack.base) as ws:
            for job, token in watched:
                await ws.watch(job, token)
            return await ws.events_until_terminal({job for job, _ in watched})

    # Eight sockets, each watching three of the jobs: every job is watched by several sockets.
    plans = [[jobs[(i + k) % 6] for k in range(3)] for i in range(8)]
    results = await asyncio.gather(*(one_socket(plan) for plan in plans))
    for plan, got in zip(plans, results, strict=True):
        for job, _ in plan:
            frames = got[job]
            assert frames[0] == {"type": "watching", "job": job}
            assert_exact(frames[1:], job, 40)


async def test_resume_with_after_on_a_new_socket_continues_exactly(stack: Stack) -> None:
    job, token = await stack.job(n=30, interval_ms=10)
    async with connect(stack.base) as ws:
        await ws.watch(job, token)
        assert await ws.recv() == {"type": "watching", "job": job}
        first = [await ws.recv() for _ in range(7)]
    assert [e["seq"] for e in first] == list(range(1, 8))
    async with connect(stack.base) as ws:
        await ws.watch(job, token, after=first[-1]["id"])
        got = await ws.events_until_terminal({job})
    assert got[job][0] == {"type": "watching", "job": job}
    assert_exact(got[job][1:], job, 30, first_seq=8)


async def test_a_finished_job_replays_to_its_end_and_the_watch_ends(stack: Stack) -> None:
    job, token = await stack.job(n=5)
    failed, failed_token = await stack.job("fail", message="boom")
    async with connect(stack.base) as ws:
        await ws.watch(job, token)
        await ws.events_until_terminal({job})
    async with connect(stack.base) as ws:
        await ws.watch(job, token)
        await ws.watch(failed, failed_token)
        got = await ws.events_until_terminal({job, failed})
        assert_exact(got[job][1:], job, 5)
        assert [(e.get("event"), e.get("data")) for e in got[failed][1:]] == [
            ("failed", {"message": "boom"})
        ]
        # The watch ended by itself: unwatching it now is an error.
        await ws.send({"op": "unwatch", "job": job})
        assert (await ws.recv())["code"] == "not_found"
        # Watching from the terminal event on: nothing can follow, and the client is told so.
        await ws.watch(job, token, after=got[job][-1]["id"])
        assert await ws.recv() == {"type": "watching", "job": job}
        assert await ws.recv() == {"type": "unwatched", "job": job}


async def test_a_forged_token_is_unauthorized_and_gets_nothing(stack: Stack) -> None:
    job, token = await stack.job(n=3)
    async with connect(stack.base) as ws:
        await ws.watch(job, token[:-2] + "xx")
        await ws.watch(job, tokens.sign(job, "another-secret"))
        # A job that does not exist gets the same answer: the token is checked first.
        await ws.watch("no-such-job", "whatever")
        await ws.send({"op": "ping"})
        replies = [await ws.recv() for _ in range(4)]
    assert [(r["type"], r.get("code"), r.get("job")) for r in replies] == [
        ("error", "unauthorized", job),
        ("error", "unauthorized", job),
        ("error", "unauthorized", "no-such-job"),
        ("pong", None, None),
    ]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('"watch"', "bad_request"),
        ('{"op": "dance"}', "bad_request"),
        ('{"op": 5}', "bad_request"),
        ('{"no_op": true}', "bad_request"),
        ('{"op": "watch", "token": "t"}', "bad_request"),
        ('{"op": "watch", "job": 12, "token": "t"}', "bad_request"),
        ('{"op": "watch", "job": "../../etc", "token": "t"}', "bad_request"),
        ('{"op": "watch", "job": "' + "a" * 65 + '", "token": "t"}', "bad_request"),
        ('{"op": "watch", "job": "j", "token": 7}', "bad_request"),
        ('{"op": "watch", "job": "j", "token": "t", "after": 5}', "bad_request"),
        ('{"op": "watch", "job": "j", "token": "t", "after": "soon"}', "bad_request"),
        ('{"op": "unwatch"}', "bad_request"),
        ('{"op": "unwatch", "job": "not-watched"}', "not_found"),
        (b'{"op": "ping"}', "bad_request"),
    ],
)
async def test_bad_frames_get_their_error_and_the_socket_stays_usable(
    stack: Stack, frame: str | bytes, code: str
) -> None:
    async with connect(stack.base) as ws:
        await ws.send(frame)
        reply = await ws.recv()
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert isinstance(reply["message"], str) and reply["message"]
        await ws.send({"op": "ping"})
        assert await ws.recv() == {"type": "pong"}
        job, token = await stack.job(n=2)
        await ws.watch(job, token)
        got = await ws.events_until_terminal({job})
        assert_exact(got[job][1:], job, 2)


async def test_unwatch_and_the_watch_limit(stack: Stack) -> None:
    jobs = [await stack.job("sleep", seconds=30) for _ in range(6)]
    async with connect(stack.base) as ws:
        for job, token in jobs[:5]:
            await ws.watch(job, token)
            assert await ws.recv() == {"type": "watching", "job": job}
        await ws.watch(*jobs[5])
        refused = await ws.recv()
        assert (refused["code"], refused["job"]) == ("too_many_watches", jobs[5][0])
        await ws.send({"op": "unwatch", "job": jobs[0][0]})
        assert await ws.recv() == {"type": "unwatched", "job": jobs[0][0]}
        await ws.watch(*jobs[5])
        assert await ws.recv() == {"type": "watching", "job": jobs[5][0]}


async def test_gone_for_expired_results_and_rewound_positions(stack: Stack) -> None:
    job, token = await stack.job(n=3)
    async with connect(stack.base) as ws:
        await ws.watch(job, token)
        await ws.events_until_terminal({job})
        # A position past the job's end cannot be served in full.
        await ws.watch(job, token, after="99-0")
        assert await ws.recv() == {"type": "watching", "job": job}
        gone = await ws.recv()
        assert (gone["type"], gone["code"], gone["job"]) == ("error", "gone", job)
        # Results that expired.
        await stack.client.delete(KEYS.events(job), KEYS.meta(job))
        await ws.watch(job, token)
        assert await ws.recv() == {"type": "watching", "job": job}
        gone = await ws.recv()
        assert (gone["code"], gone["job"]) == ("gone", job)
        ghost = "expired-long-ago"
        await ws.watch(ghost, tokens.sign(ghost, "test-secret"))
        assert await ws.recv() == {"type": "watching", "job": ghost}
        assert (await ws.recv())["code"] == "gone"


@pytest.mark.slow
async def test_watches_survive_a_redis_restart(stack: Stack) -> None:
    jobs = [await stack.job(n=30, interval_ms=40) for _ in range(3)]
    before: list[dict[str, Any]] = []
    async with connect(stack.base) as ws:
        for job, token in jobs:
            await ws.watch(job, token)
        while sum(f["type"] == "event" for f in before) < 6:
            before.append(await ws.recv())
        stack.server.kill()
        # Down until every watch has been told (the outage reached the watchers, not a blip
        # the gateway rode out unnoticed), then back.
        told: set[str] = set()
        while len(told) < len(jobs):
            frame = await ws.recv()
            before.append(frame)
            if frame["type"] == "error":
                told.add(frame["job"])
        stack.server.start()
        after = await ws.events_until_terminal({job for job, _ in jobs}, timeout_s=60)
    # Every event exactly once across the restart, and one outage error per watch: the watch
    # is told once, goes on and resumes by itself.
    for job, _ in jobs:
        frames = [f for f in before if f.get("job") == job] + after[job]
        errors = [f for f in frames if f["type"] == "error"]
        assert [e["code"] in ("busy", "unavailable") for e in errors] == [True], errors
        assert_exact([f for f in frames if f["type"] == "event"], job, 30)
