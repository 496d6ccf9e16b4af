"""Server-Sent Events (`GET /jobs/{job}/events`), end to end against both delivery modes: the
same guarantees as a WebSocket watch over plain HTTP, resume with Last-Event-ID (on another
gateway too), HTTP errors before the stream, SSE errors in it, flow control, keepalives at no
Redis cost, the socket limit and shutdown."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import tokens
from service.config import DELIVERY_MODES, Settings
from service.gateway.protocol import CloseCode
from service.keys import Keys
from service.migrate import migrate
from tests.attackers import raw_socket, wait_until_dropped
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway, running_worker
from tests.redis_servers import RedisServer, command_calls
from tests.sse_client import Message, messages, read_events
from tests.test_metrics import samples
from tests.ws_client import assert_exact, connect, submit

KEYS = Keys()


@pytest.fixture(params=DELIVERY_MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = server.client()
    await migrate(client, KEYS, report=lambda _: None)
    await client.aclose()
    yield server
    server.stop()


def settings_for(server: RedisServer, mode: str, **overrides: Any) -> Settings:
    return make_settings(server.url, delivery_mode=mode, **overrides)


def event_frames(got: list[Message]) -> list[dict[str, Any]]:
    frames = []
    for message in got:
        assert message.event != "error", message.data
        assert message.id == message.data["id"] and message.event == message.data["event"]
        frames.append(message.data)
    return frames


async def test_a_whole_job_as_an_event_stream(server: RedisServer, mode: str) -> None:
    settings = settings_for(server, mode)
    async with running_worker(settings), running_gateway(settings) as base:
        job, token = await submit(base, "count", {"n": 30, "interval_ms": 5})
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            async with http.stream("GET", f"/jobs/{job}/events", params={"token": token}) as r:
                assert r.headers["cache-control"].startswith("no-cache")
                assert r.headers["x-accel-buffering"] == "no"
            got = await read_events(http, job, token)
            # The same events as a WebSocket watch gets, frame for frame.
            async with connect(base) as ws:
                await ws.watch(job, token)
                ws_frames = (await ws.events_until_terminal({job}))[job][1:]
    assert_exact(event_frames(got), job, 30)
    assert event_frames(got) == ws_frames


async def test_resume_with_last_event_id_on_the_other_gateway(
    server: RedisServer, mode: str
) -> None:
    settings = settings_for(server, mode)
    async with (
        running_worker(settings),
        running_gateway(settings) as first,
        running_gateway(settings) as second,
    ):
        job, token = await submit(first, "count", {"n": 40, "interval_ms": 10})
        async with httpx.AsyncClient(base_url=first, timeout=30) as http:
            head = await read_events(http, job, token, stop_after=12)
        async with httpx.AsyncClient(base_url=second, timeout=30) as http:
            rest = await read_events(http, job, token, last_event_id=head[-1].id)
            # `after` does the same, and Last-Event-ID (the browser's reconnect) wins over it.
            again = await read_events(http, job, token, after="30-0", last_event_id="35-0")
    assert_exact(event_frames(head) + event_frames(rest), job, 40)
    assert [m.data["seq"] for m in again] == list(range(36, 42))


async def test_http_errors_before_the_stream_and_gone_in_it(server: RedisServer, mode: str) -> None:
    settings = settings_for(server, mode)
    async with running_worker(settings), running_gateway(settings) as base:
        job, token = await submit(base, "count", {"n": 3})
        waiting, waiting_token = await submit(base, "sleep", {"seconds": 30})
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            wrong = await http.get(f"/jobs/{job}/events", params={"token": "forged"})
            assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
            bad = await http.get(f"/jobs/{job}/events", params={"token": token, "after": "x"})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
            await wait_for(lambda: _finished(http, job, token), what="the job to finish")
            # At or past the terminal event nothing will follow: 204, which stops EventSource.
            ended = await http.get(f"/jobs/{job}/events", params={"token": token, "after": "4-0"})
            assert ended.status_code == 204
            # A position past what a running job holds: `gone`, and the stream ends.
            got = await read_events(http, waiting, waiting_token, after="5-0")
    assert [(m.event, m.data["code"]) for m in got] == [("error", "gone")]


async def _finished(http: httpx.AsyncClient, job: str, token: str) -> bool:
    reply = await http.get(f"/jobs/{job}", params={"token": token})
    return bool(reply.json()["status"] == "done")


async def test_an_unknown_job_is_404(server: RedisServer) -> None:
    settings = settings_for(server, "pubsub")
    async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
        job = "AAAAAAAAAAAAAAAAAAAAAA"
        reply = await http.get(
            f"/jobs/{job}/events", params={"token": tokens.sign(job, settings.secret_key)}
        )
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"


async def test_a_stream_read_slowly_gets_everything(server: RedisServer, mode: str) -> None:
    """Flow control: a client that stops reading is paused (served from the stream later),
    then gets every event exactly once when it reads again."""
    settings = settings_for(
        server, mode, max_send_queue_bytes=64 * 1024, socket_send_buffer_bytes=32 * 1024
    )
    async with running_worker(settings), running_gateway(settings) as base:
        job, token = await submit(base, "count", {"n": 400, "size": 2000})
        host, port = base.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        # A plain socket nobody reads until the stream is paused (an asyncio stream would
        # read into its own buffer at once).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        request = f"GET /jobs/{job}/events?token={token} HTTP/1.1\r\nHost: x\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())

        async def paused() -> bool:
            async with httpx.AsyncClient(base_url=base) as http:
                found = samples((await http.get("/metrics")).text)
            return any(v >= 1 for (n, _), v in found.items() if n == "resultcast_watches_paused")

        await wait_for(paused, timeout_s=30, what="the stream to be paused")
        body = bytearray()
        while not body.endswith(b"\r\n0\r\n\r\n"):  # until the response ends
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 30)
            assert chunk, "the connection closed before the response ended"
            body += chunk
        sock.close()
    frames = _events_in(bytes(body))
    assert_exact(frames, job, 400)


def _events_in(body: bytes) -> list[dict[str, Any]]:
    import orjson

    head, _, rest = body.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    assert b"transfer-encoding: chunked" in head.lower()
    data = _dechunk(rest)
    return [orjson.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: {")]


def _dechunk(raw: bytes) -> bytes:
    out, i = bytearray(), 0
    while True:
        end = raw.index(b"\r\n", i)
        size = int(raw[i:end], 16)
        if size == 0:
            return bytes(out)
        out += raw[end + 2 : end + 2 + size]
        i = end + 2 + size + 2


async def test_keepalive_comments_cost_redis_nothing(server: RedisServer, mode: str) -> None:
    settings = settings_for(server, mode, sse_keepalive_s=0.2, xread_block_ms=60_000)
    client = server.client()
    async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
        job, token = await submit(base, "sleep", {"seconds": 60})  # no worker: silent
        async with http.stream("GET", f"/jobs/{job}/events", params={"token": token}) as r:
            stream = messages(r)
            first = await anext(stream)  # the watch is in place once the first comes
            assert first.comment == "keepalive"
            before = await command_calls(client)
            comments = [await anext(stream) for _ in range(5)]
            assert await command_calls(client) - before == 1  # the INFO measuring it
    await client.aclose()
    assert [m.comment for m in comments] == ["keepalive"] * 5


async def test_the_socket_limit_counts_streams(server: RedisServer) -> None:
    settings = settings_for(server, "pubsub", max_sockets=1)
    async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
        job, token = await submit(base, "sleep", {"seconds": 60})
        async with http.stream("GET", f"/jobs/{job}/events", params={"token": token}):
            full = await http.get(f"/jobs/{job}/events", params={"token": token})
            assert full.status_code == 503 and full.json()["error"]["code"] == "capacity"
            assert full.headers["retry-after"]
            found = samples((await http.get("/metrics")).text)
    streams = (("mode", "pubsub"), ("transport", "sse"))
    assert found[("resultcast_streams_open", streams)] == 1


async def test_a_stream_ends_on_shutdown_and_resumes_elsewhere(
    server: RedisServer, mode: str
) -> None:
    """A gateway that stops ends its streams (an EventSource then reconnects with
    Last-Event-ID); the rest comes from another gateway, exactly."""
    settings = settings_for(server, mode)
    got: list[Message] = []

    async def read_until_the_end(base: str, job: str, token: str) -> None:
        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as http,
            http.stream("GET", f"/jobs/{job}/events", params={"token": token}) as r,
        ):
            async for message in messages(r):
                if message.event != "comment":
                    got.append(message)

    async with running_worker(settings), running_gateway(settings) as other:
        job, token = await submit(other, "count", {"n": 60, "interval_ms": 20})
        async with running_gateway(settings) as leaving:
            reading = asyncio.create_task(read_until_the_end(leaving, job, token))
            await wait_for(lambda: len(got) >= 5, timeout_s=20, what="the first events")
        await asyncio.wait_for(reading, 10)  # the response ended when the gateway stopped
        assert got[-1].data["event"] == "data", "the job was still running"
        async with httpx.AsyncClient(base_url=other, timeout=30) as http:
            got += await read_events(http, job, token, last_event_id=got[-1].id)
    assert_exact(event_frames(got), job, 60)


async def test_the_readmes_curl_example(server: RedisServer) -> None:
    """`curl -N` as docs/protocol.md shows it: every event of a job, and curl ends with the job."""
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI"):
            pytest.fail("curl is not installed")
        pytest.skip("curl is not installed")
    settings = settings_for(server, "pubsub")
    async with running_worker(settings), running_gateway(settings) as base:
        job, token = await submit(base, "count", {"n": 10, "interval_ms": 10})
        url = f"{base}/jobs/{job}/events?token={token}"
        process = await asyncio.create_subprocess_exec(
            curl, "-N", "-s", url, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    lines = out.decode().splitlines()
    assert [line for line in lines if line.startswith("id: ")] == [
        f"id: {i}-0" for i in range(1, 12)
    ]
    assert "event: done" in lines


async def test_a_stream_without_events_ends_after_the_idle_timeout(server: RedisServer) -> None:
    """Keepalives keep proxies from cutting the stream, but do not keep it open forever: after
    IDLE_TIMEOUT_S without an event the response ends (an EventSource reconnects)."""
    settings = settings_for(server, "pubsub", idle_timeout_s=0.6, sse_keepalive_s=0.2)
    async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
        job, token = await submit(base, "sleep", {"seconds": 60})  # no worker: silent
        async with http.stream("GET", f"/jobs/{job}/events", params={"token": token}) as r:
            got = [m async for m in messages(r)]  # returns once the response has ended
    assert got and all(m.comment == "keepalive" for m in got)


async def test_an_event_stream_checks_what_get_checks_and_the_origin(
    server: RedisServer,
) -> None:
    """One check for both reads: a malformed id is 400 on each (the stream said 403); and a
    browser's Origin is held to ALLOWED_ORIGINS as a WebSocket's is (the stream ignored it)."""
    settings = settings_for(server, "pubsub", allowed_origins=("https://app.example",))
    async with (
        running_worker(settings),
        running_gateway(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        for path in ("/jobs/not*an*id", "/jobs/not*an*id/events"):
            reply = await http.get(path, params={"token": "t"})
            assert reply.status_code == 400, (path, reply.text)
            assert reply.json()["error"]["code"] == "bad_request"
        job, token = await submit(base, "count", {"n": 2})
        params = {"token": token}
        wrong = await http.get(
            f"/jobs/{job}/events", params=params, headers={"Origin": "https://evil.example"}
        )
        assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
        for origin in ({"Origin": "https://app.example"}, {}):  # right, or none (not a browser)
            async with http.stream(
                "GET", f"/jobs/{job}/events", params=params, headers=origin
            ) as reply:
                assert reply.status_code == 200, origin


def test_no_close_code_is_an_alias_of_another() -> None:
    """An alias made `IDLE is NORMAL`: an idle stream was taken for one whose job ended."""
    assert len(CloseCode.__members__) == len({code.value for code in CloseCode})


async def test_an_idle_stream_whose_client_reads_nothing_ends_within_the_grace(
    server: RedisServer,
) -> None:
    """Idle, the end must go out within SHUTDOWN_GRACE_S like any close but a job's end (the
    stall timeout here is a minute: only the grace can end it in time)."""
    settings = settings_for(
        server, "pubsub", idle_timeout_s=1.0, send_stall_timeout_s=60.0, shutdown_grace_s=0.5
    )
    async with running_worker(settings), running_gateway(settings) as base:
        # Two 500 KB events, then nothing for a minute: idle once the first ones are queued.
        job, token = await submit(base, "count", {"n": 2, "size": 500_000, "interval_ms": 60_000})
        port = int(base.rsplit(":", 1)[1])

        def stuck_stream() -> float:
            sock = raw_socket(port)
            sock.sendall(
                f"GET /jobs/{job}/events?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            took = wait_until_dropped(sock, 20)
            sock.close()
            return took

        took = await asyncio.to_thread(stuck_stream)
    assert took < 10, took  # idle (1 s) + grace (0.5 s), not the minute of the stall timeout
