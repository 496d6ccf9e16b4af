"""The Python client and its CLI against real gateways, including one restarted mid-job."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from typing import Any

import pytest
import redis.asyncio as redis
from websockets.asyncio.server import ServerConnection, serve

from service.client import ClientError, WatchError, socket_url, submit, watch
from service.config import Settings
from service.model import is_job_id, new_job_id
from service.processes import SERVICE
from tests.conftest import ROOT, service_env, wait_for
from tests.processes import (
    gateway_process,
    ready,
    refusing_websockets,
    running_gateway,
    running_worker,
)
from tests.redis_servers import RedisServer, free_port
from tests.ws_client import assert_exact


def test_socket_urls() -> None:
    assert socket_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert socket_url("https://example.org/rc/") == "wss://example.org/rc/ws"


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_watch_survives_a_gateway_restart_mid_job(
    redis_server: RedisServer, settings: Settings, migrated: redis.Redis, transport: Any
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    events: list[dict[str, Any]] = []
    reconnects: list[str | None] = []
    enough = asyncio.Event()

    async def follow(job: str, token: str) -> None:
        async for event in watch(
            job,
            token,
            base=base,
            transport=transport,
            on_reconnect=lambda i, _: reconnects.append(i),
        ):
            events.append(event)
            if len(events) == 10:
                enough.set()

    async with running_worker(settings):
        with gateway_process(redis_server.url, port) as first:
            await wait_for(lambda: ready(base), what="the gateway")
            job = await submit("count", {"n": 60, "interval_ms": 40}, base=base)
            follower = asyncio.create_task(follow(job.job, job.token))
            await asyncio.wait_for(enough.wait(), 20)
            first.send_signal(signal.SIGTERM)  # its sockets get 1001
            await asyncio.to_thread(first.wait, 20)
        with gateway_process(redis_server.url, port):
            await asyncio.wait_for(follower, 60)
    assert reconnects and all(i is not None for i in reconnects)
    assert_exact(events, job.job, 60)


async def test_errors_that_end_a_watch_are_raised(
    redis_server: RedisServer, settings: Settings, migrated: redis.Redis
) -> None:
    async with running_gateway(settings) as base:
        with pytest.raises(ClientError) as refused:
            await submit("no-such-kind", {}, base=base)
        assert (refused.value.status, refused.value.code) == (400, "unknown_kind")
        job = await submit("echo", {}, base=base)
        with pytest.raises(WatchError) as ended:
            async for _ in watch(job.job, "forged-token", base=base):
                pass
        assert ended.value.code == "unauthorized"
        with pytest.raises(WatchError) as refused_stream:
            async for _ in watch(job.job, "forged-token", base=base, transport="sse"):
                pass
        assert refused_stream.value.code == "forbidden"


async def test_auto_falls_back_to_event_streams_when_upgrades_are_refused(
    settings: Settings, migrated: redis.Redis
) -> None:
    reconnects: list[str | None] = []
    async with running_worker(settings), refusing_websockets(settings) as base:
        job = await submit("count", {"n": 12, "interval_ms": 10}, base=base)
        events = [
            e
            async for e in watch(
                job.job, job.token, base=base, on_reconnect=lambda i, _: reconnects.append(i)
            )
        ]
    assert_exact(events, job.job, 12)
    assert len(reconnects) >= 2  # it tried WebSockets first


async def test_the_cli_prints_events_as_json_lines(
    redis_server: RedisServer, settings: Settings, migrated: redis.Redis
) -> None:
    async def cli(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *SERVICE, *args,
            env=service_env(redis_server.url), cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        return process.returncode or 0, out.decode(), err.decode()

    async with running_worker(settings), running_gateway(settings) as base:
        rc, out, err = await cli("submit", "count", '{"n": 3}', "--url", base)
        assert rc == 0, err
        job = json.loads(out)
        rc, out, err = await cli("watch", job["job"], f"--token={job['token']}", "--url", base)
        assert rc == 0, err
        assert_exact([json.loads(line) for line in out.splitlines()], job["job"], 3)
        failing = json.loads((await cli("submit", "fail", '{"message": "no"}', "--url", base))[1])
        rc, out, err = await cli(
            "watch", failing["job"], f"--token={failing['token']}", "--url", base
        )
        assert rc == 1 and json.loads(out)["event"] == "failed", err
        rc, _, err = await cli("watch", job["job"], "--token", "forged", "--url", base)
        assert rc == 2 and "unauthorized" in err
        rc, out, err = await cli(
            "watch", job["job"], f"--token={job['token']}", "--url", base, "--transport", "sse"
        )
        assert rc == 0, err
        assert_exact([json.loads(line) for line in out.splitlines()], job["job"], 3)


def test_the_client_needs_none_of_the_server_packages() -> None:
    hide = ["starlette", "uvicorn", "redis", "orjson", "prometheus_client", "hiredis"]
    code = (
        "import sys\n"
        f"for name in {hide!r}: sys.modules[name] = None\n"
        "import service.client, service.client_cli\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_job_ids_never_look_like_options() -> None:
    """`python -m service watch -abc` would be read as an option: such ids are never made."""
    ids = [new_job_id() for _ in range(20_000)]
    assert all(is_job_id(job) and not job.startswith("-") for job in ids)
    assert len(set(ids)) == len(ids)


async def test_a_gateway_that_closes_at_once_is_retried_ever_slower() -> None:
    """A gateway at capacity accepts and closes with 1013: the backoff must keep growing."""

    async def refuse(connection: ServerConnection) -> None:
        await connection.close(1013, "at capacity")

    delays: list[float] = []
    gave_up = asyncio.Event()

    def reconnecting(_: str | None, delay_s: float) -> None:
        delays.append(delay_s)
        if len(delays) == 4:
            gave_up.set()

    async with serve(refuse, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        base = f"http://127.0.0.1:{port}"

        async def follow() -> None:
            async for _ in watch("j", "t", base=base, on_reconnect=reconnecting):
                pass

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(gave_up.wait(), 20)
        follower.cancel()
    # Full jitter within a doubling ceiling: attempt k waits between 0.125 and 0.25 s x 2^k.
    assert all(0.125 * 2**k <= d <= 0.25 * 2**k for k, d in enumerate(delays)), delays


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVICE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_submit_to_a_url_where_nothing_listens_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = _cli("submit", "count", '{"n": 2}', "--url", url)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"submit: cannot reach the gateway at {url}/jobs: "), line
    assert "onnect" in line, line  # the reason: the connection was refused


@pytest.mark.parametrize("transport", ["auto", "ws", "sse"])
def test_watch_gives_up_on_a_url_where_no_gateway_ever_answered(transport: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    job = new_job_id()
    done = _cli(
        "watch", job, "--token=t", "--url", url, "--give-up-after", "1", "--transport", transport
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("watch: cannot connect to "), lines
    assert "127.0.0.1" in lines[0] and "retrying" in lines[0], lines
    assert lines[-1].startswith("watch: ended: unreachable: no gateway answered at "), lines
    assert "for 1 s" in lines[-1], lines
    assert len(lines) <= 4, lines  # one line per reason, not one per attempt
