"""README promises that no other test held (issue 17): the socket limit on the real gateway,
`GET /jobs` paging at MAX_REPLAY_EVENTS, a catch-up over several CATCH_UP_PAGE_SIZE pages, and
`Retry-After` on every 503 the gateway answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from service.keys import Keys
from service.migrate import migrate
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway, running_stack
from tests.redis_servers import RedisServer
from tests.ws_client import assert_exact, connect, submit


async def finished(base: str, job: str, token: str) -> bool:
    async with httpx.AsyncClient(base_url=base) as http:
        reply = await http.get(f"/jobs/{job}", params={"token": token})
    return bool(reply.json()["status"] == "done")


async def test_one_socket_past_max_sockets_is_closed_with_1013(tmp_path: Path) -> None:
    async with running_stack(tmp_path, max_sockets=2) as base:
        async with connect(base) as first, connect(base) as second:
            await first.send({"op": "ping"})
            await second.send({"op": "ping"})
            assert await first.recv() == await second.recv() == {"type": "pong"}
            async with connect(base) as third:
                with pytest.raises(ConnectionClosed) as closed:
                    await third.recv()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                1013,
                "server at capacity, retry later",
            )
        # Once the others are gone there is room again.
        job, token = await submit(base, "count", {"n": 3})
        async with connect(base) as again:
            await again.watch(job, token)
            got = await again.events_until_terminal({job})
        assert_exact(got[job][1:], job, 3)


async def test_get_jobs_pages_at_max_replay_events(tmp_path: Path) -> None:
    async with running_stack(tmp_path, max_replay_events=5) as base:
        job, token = await submit(base, "count", {"n": 12})  # 13 events with the `done`
        await wait_for(lambda: finished(base, job, token), what="the job to finish")
        events: list[dict[str, Any]] = []
        pages: list[tuple[int, bool]] = []
        after = None
        async with httpx.AsyncClient(base_url=base) as http:
            while True:
                params = {"token": token} | ({"after": after} if after else {})
                body = (await http.get(f"/jobs/{job}", params=params)).json()
                pages.append((len(body["events"]), body.get("more", False)))
                events += body["events"]
                if not body.get("more"):
                    break
                after = body["events"][-1]["id"]
    assert pages == [(5, True), (5, True), (3, False)]
    assert_exact(events, job, 12)


async def test_a_catch_up_spans_several_pages(tmp_path: Path) -> None:
    """A watch of a finished job of 31 events, read 4 at a time: every event once, in order."""
    async with running_stack(tmp_path, catch_up_page_size=4) as base:
        job, token = await submit(base, "count", {"n": 30})
        await wait_for(lambda: finished(base, job, token), what="the job to finish")
        async with connect(base) as ws:
            await ws.watch(job, token)
            got = await ws.events_until_terminal({job})
            await ws.watch(job, token, after="13-0")  # from the middle of a page
            rest = await ws.events_until_terminal({job})
    assert_exact(got[job][1:], job, 30)
    assert_exact(rest[job][1:], job, 30, first_seq=14)


async def test_every_503_says_when_to_retry(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings = make_settings(server.url)
    client = server.client()
    await migrate(client, Keys(), report=lambda _: None)
    await client.aclose()
    try:
        async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
            job, token = await submit(base, "count", {"n": 1})
            server.stop()  # Redis gone: every route that needs it answers 503
            answers = {
                "submit": await http.post("/jobs", json={"kind": "count", "payload": {"n": 1}}),
                "read": await http.get(f"/jobs/{job}", params={"token": token}),
                "stream": await http.get(f"/jobs/{job}/events", params={"token": token}),
                "readyz": await http.get("/readyz"),
            }
    finally:
        server.stop()
    for route, reply in answers.items():
        assert reply.status_code == 503, (route, reply.status_code, reply.text)
        assert reply.headers.get("retry-after"), route
        assert reply.json()["error"]["code"] in ("busy", "unavailable", "capacity"), route
