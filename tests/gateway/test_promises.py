"""README promises that no other test held (issue 17): the socket limit on the real gateway,
`GET /jobs` paging at MAX_REPLAY_EVENTS, a catch-up over several CATCH_UP_PAGE_SIZE pages, and
`Retry-After` on every 503 the gateway answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from service.client import ClientError, watch
from service.gateway.app import create_app
from service.gateway.server import uvicorn_config
from service.handlers import Job
from service.keys import Keys
from service.migrate import migrate
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway, running_stack, running_worker, serving
from tests.redis_servers import RedisServer, free_port
from tests.sse_client import read_events
from tests.test_metrics import samples
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
            async with httpx.AsyncClient(base_url=base) as http:
                found = samples((await http.get("/metrics")).text)
            closes = (("code", "1013"), ("mode", "pubsub"))
            assert found[("resultcast_socket_closes_total", closes)] == 1
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


async def chatty(job: Job) -> Any:
    """Emits more events than a job may hold (the gateway refuses a `count` that would)."""
    for i in range(1, 21):
        await job.emit({"i": i})
    return {"count": 20}


async def test_a_job_over_max_events_per_job_is_failed_with_a_message(tmp_path: Path) -> None:
    async with running_stack(tmp_path, max_events_per_job=5, handlers={"chatty": chatty}) as base:
        await wait_for(lambda: _kind_known(base), what="the worker to register its kind")
        job, token = await submit(base, "chatty", {})
        async with connect(base) as ws:
            await ws.watch(job, token)
            frames = (await ws.events_until_terminal({job}))[job][1:]
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5, 6]
    assert frames[-1]["event"] == "failed"
    assert frames[-1]["data"] == {"message": "job exceeded the limit of 5 events"}


async def test_the_python_clients_on_error_gets_transient_errors_and_the_watch_goes_on(
    tmp_path: Path,
) -> None:
    """Two watches and one XREAD connection: one watch is told `capacity` (transient), its
    `on_error` hears it, and both still get every event."""
    async with running_stack(
        tmp_path, delivery_mode="xread", xread_max_connections=1, xread_block_ms=200
    ) as base:
        jobs = [await submit(base, "count", {"n": 8, "interval_ms": 100}) for _ in range(2)]
        heard: list[ClientError] = []

        async def follow(job: str, token: str) -> list[dict[str, Any]]:
            return [
                e async for e in watch(job, token, base=base, transport="ws", on_error=heard.append)
            ]

        results = await asyncio.gather(*(follow(job, token) for job, token in jobs))
    for (job, _), events in zip(jobs, results, strict=True):
        assert_exact(events, job, 8)
    assert heard and {e.code for e in heard} == {"capacity"}, heard


async def _kind_known(base: str) -> bool:
    async with httpx.AsyncClient(base_url=base) as http:
        reply = await http.post("/jobs", json={"kind": "chatty", "payload": {"probe": True}})
    return reply.status_code == 202


async def test_a_frozen_redis_is_busy_over_http(tmp_path: Path) -> None:
    """Redis that does not answer within the socket timeout: `busy`, 503, Retry-After."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = server.client()
    await migrate(client, Keys(), report=lambda _: None)
    await client.aclose()
    settings = make_settings(server.url, redis_socket_timeout_s=0.5)
    try:
        async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                reply = await http.post("/jobs", json={"kind": "count", "payload": {"n": 1}})
            finally:
                server.process.send_signal(signal.SIGCONT)
    finally:
        server.stop()
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["code"] == "busy" and reply.headers["retry-after"]


async def test_shutdown_waits_for_no_client_longer_than_its_grace(tmp_path: Path) -> None:
    """SHUTDOWN_GRACE_S: a client that reads nothing (its close frame stuck behind a backlog)
    does not hold the gateway's shutdown; a reading client gets 1001."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = server.client()
    await migrate(client, Keys(), report=lambda _: None)
    await client.aclose()
    settings = make_settings(
        server.url,
        shutdown_grace_s=1.0,
        send_stall_timeout_s=600.0,  # only the grace may end the stuck client
        socket_send_buffer_bytes=32 * 1024,
        max_send_queue_bytes=1024 * 1024,
    )
    try:
        async with running_worker(settings):
            gateway = running_gateway(settings)
            base = await gateway.__aenter__()
            job, token = await submit(base, "count", {"n": 2000, "size": 2000})
            async with (
                connect(base, small_buffers=True, close_timeout=1) as stuck,
                connect(base, close_timeout=1) as reading,
            ):
                await stuck.watch(job, token)
                await reading.watch(job, token)
                await reading.events_until_terminal({job}, timeout_s=60)
                async with httpx.AsyncClient(base_url=base) as http:
                    backlog = samples((await http.get("/metrics")).text)
                assert backlog[("resultcast_watches_paused", (("mode", "pubsub"),))] >= 1
                # Stops within its own bound (running_gateway allows 20 s), whatever `stuck`
                # does; were the stuck client waited for, this would time out.
                await gateway.__aexit__(None, None, None)
                with pytest.raises(ConnectionClosed):
                    while True:
                        await reading.recv()
                assert reading.ws.close_code == 1001
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def poisoned_gateway(
    redis_server: RedisServer,
) -> AsyncIterator[tuple[str, tuple[str, str], tuple[str, str]]]:
    """A gateway whose delivery raises for one job (a bug, injected into the running
    gateway), with a worker: its base URL, that job and a healthy one of 20 events beside it
    (each as job and token)."""
    settings = make_settings(redis_server.url)
    client = redis_server.client()
    await migrate(client, Keys(), report=lambda _: None)
    await client.aclose()
    app = create_app(settings)
    config = uvicorn_config(settings, "127.0.0.1", free_port(), app)
    async with running_worker(settings), serving(config) as base:
        poisoned = await submit(base, "count", {"n": 1})
        healthy = await submit(base, "count", {"n": 20, "interval_ms": 5})
        delivery = app.gateway().delivery
        real_watch = delivery.watch

        def watch(job: str, watcher: Any, after_seq: int) -> None:
            if job == poisoned[0]:
                raise RuntimeError("injected: a bug in delivery")
            real_watch(job, watcher, after_seq)

        delivery.watch = watch  # type: ignore[method-assign]
        yield base, poisoned, healthy


@pytest.mark.logs_errors  # provoked on purpose
async def test_an_internal_error_closes_only_its_client_with_1011(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug met while serving one client (here: the delivery raises for one job, injected
    into the running gateway) closes that client with 1011 and one log line; another client
    of the same gateway, and the gateway itself, go on."""
    async with (
        poisoned_gateway(redis_server) as (base, (poisoned, poisoned_token), (job, token)),
        connect(base) as victim,
        connect(base) as bystander,
    ):
        await bystander.watch(job, token)
        with caplog.at_level(logging.ERROR, logger="service.gateway.ws"):
            await victim.send({"op": "watch", "job": poisoned, "token": poisoned_token})
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await victim.recv()
        got = await bystander.events_until_terminal({job})
        async with httpx.AsyncClient(base_url=base) as http:
            health = await http.get("/readyz")
            found = samples((await http.get("/metrics")).text)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "internal error")
    assert_exact(got[job][1:], job, 20)
    assert health.status_code == 200
    assert found[("resultcast_socket_closes_total", (("code", "1011"), ("mode", "pubsub")))] == 1
    failures = [r for r in caplog.records if r.name == "service.gateway.ws"]
    assert len(failures) == 1 and "1011" in failures[0].getMessage()


@pytest.mark.logs_errors  # provoked on purpose
async def test_an_internal_error_ends_only_its_event_stream_saying_so(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The same bug met serving an event stream: that stream gets `event: error` with code
    `internal` and ends (it used to end without a word), counted like a 1011 close; another
    client of the gateway goes on."""
    async with (
        poisoned_gateway(redis_server) as (base, (poisoned, poisoned_token), (job, token)),
        connect(base) as bystander,
        httpx.AsyncClient(base_url=base) as http,
    ):
        await bystander.watch(job, token)
        with caplog.at_level(logging.ERROR, logger="service.gateway.sse"):
            got_stream = await read_events(http, poisoned, poisoned_token)
        got = await bystander.events_until_terminal({job})
        found = samples((await http.get("/metrics")).text)
    assert [(m.event, m.data["code"], m.data["job"]) for m in got_stream] == [
        ("error", "internal", poisoned)
    ]
    assert_exact(got[job][1:], job, 20)
    assert found[("resultcast_socket_closes_total", (("code", "1011"), ("mode", "pubsub")))] == 1
    failures = [r for r in caplog.records if r.name == "service.gateway.sse"]
    assert len(failures) == 1 and "internal error" in failures[0].getMessage()
