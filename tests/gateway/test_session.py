"""Per-socket behaviour: close codes, limits, slow clients, shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from service.keys import Keys
from service.migrate import migrate
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway, running_stack
from tests.redis_servers import RedisServer
from tests.ws_client import assert_exact, connect, submit

KEYS = Keys()


async def test_idle_sockets_close_with_1000_but_not_while_events_flow(tmp_path: Path) -> None:
    async with running_stack(tmp_path, idle_timeout_s=0.6) as base:
        async with connect(base) as idle:
            assert await idle.closed_with() == 1000
        job, token = await submit(base, "count", {"n": 8, "interval_ms": 200})
        async with connect(base) as busy:
            await busy.watch(job, token)
            got = await busy.events_until_terminal({job})  # 1.6 s of events, no client frames
            assert_exact(got[job][1:], job, 8)
            assert await busy.closed_with() == 1000


async def test_client_frames_keep_a_socket_open_past_the_idle_timeout(tmp_path: Path) -> None:
    """The read's deadline is one timer per socket that fires early while the client is
    active: it moves, and closes the socket only once the client has been quiet that long."""
    async with running_stack(tmp_path, idle_timeout_s=0.6) as base, connect(base) as ws:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 1.8:  # three idle timeouts, a ping every 0.15 s
            await ws.send({"op": "ping"})
            assert await ws.recv() == {"type": "pong"}
            last_pong = loop.time()
            await asyncio.sleep(0.15)  # the client's pace, not a wait for the server
        assert await ws.closed_with() == 1000
        assert loop.time() - last_pong >= 0.55  # quiet for the whole timeout first


async def test_shutdown_closes_sockets_with_1001(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = server.client()
    await migrate(client, KEYS, report=lambda _: None)
    settings = make_settings(server.url)
    try:
        async with running_gateway(settings) as base:
            ws_context = connect(base)
            ws = await ws_context.__aenter__()
            await ws.send({"op": "ping"})
            assert await ws.recv() == {"type": "pong"}
            closed = asyncio.create_task(ws.closed_with())
        assert await asyncio.wait_for(closed, 10) == 1001
        await ws_context.__aexit__(None, None, None)
    finally:
        await client.aclose()
        server.stop()


async def test_a_frame_over_the_limit_closes_with_1009(tmp_path: Path) -> None:
    async with running_stack(tmp_path, max_frame_bytes=1024) as base, connect(base) as ws:
        await ws.send({"op": "ping", "pad": "x" * 2000})
        assert await ws.closed_with() == 1009


async def test_too_many_bad_frames_close_with_1008(tmp_path: Path) -> None:
    async with running_stack(tmp_path, max_bad_frames_per_min=5) as base, connect(base) as ws:
        for _ in range(6):
            await ws.send("nonsense")
        codes = [(await ws.recv())["code"] for _ in range(5)]
        assert codes == ["bad_request"] * 5
        assert await ws.closed_with() == 1008


async def test_origins_outside_the_allow_list_are_closed_with_1008(tmp_path: Path) -> None:
    async with running_stack(tmp_path, allowed_origins=("https://app.example",)) as base:
        async with connect(base, origin="https://evil.example") as ws:
            assert await ws.closed_with() == 1008
        async with connect(base) as ws:  # no Origin at all: not a browser, so no other site
            await ws.send({"op": "ping"})
            assert await ws.recv() == {"type": "pong"}
        async with connect(base, origin="https://app.example") as ws:
            await ws.send({"op": "ping"})
            assert await ws.recv() == {"type": "pong"}


async def test_a_replay_longer_than_the_limit_is_refused_with_gone(tmp_path: Path) -> None:
    async with running_stack(tmp_path, max_replay_events=5) as base:
        job, token = await submit(base, "count", {"n": 12})  # 13 events with the `done`

        async def finished() -> bool:
            async with httpx.AsyncClient() as http:
                reply = await http.get(f"{base}/jobs/{job}", params={"token": token})
            return bool(reply.json()["status"] == "done")

        await wait_for(finished, what="the job to finish")
        async with connect(base) as ws:
            await ws.watch(job, token)
            got = await ws.events_until_terminal({job})
            assert [f["type"] for f in got[job]] == ["watching", "error"]
            assert got[job][1]["code"] == "gone" and "MAX_REPLAY_EVENTS" in got[job][1]["message"]
            await ws.watch(job, token, after="8-0")  # 5 behind: within the limit
            got = await ws.events_until_terminal({job})
            assert_exact(got[job][1:], job, 12, first_seq=9)
