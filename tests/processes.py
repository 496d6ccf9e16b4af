"""Helpers that run the service's real processes for tests: in-process or as children."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as redis
import uvicorn

from service.config import Settings
from service.gateway.server import gateway_server, uvicorn_config
from service.handlers import BUILTIN_HANDLERS, Handler
from service.keys import Keys
from service.migrate import migrate
from service.processes import SERVICE, answers_ready, stop
from service.worker import Worker
from tests.conftest import ROOT, make_settings, service_env, wait_for
from tests.redis_servers import RedisServer, free_port


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, *, concurrency: int = 4, handlers: dict[str, Handler] | None = None
) -> AsyncIterator[Worker]:
    worker = Worker(settings, dict(handlers or BUILTIN_HANDLERS), concurrency=concurrency)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[str]:
    """A real uvicorn server on a free port, in this event loop; yields its base URL."""
    port = free_port()
    server = gateway_server(settings, "127.0.0.1", port)

    async def serve() -> None:
        # uvicorn exits the process on a failed startup; here that must be a test failure,
        # not a SystemExit that escapes the event loop and stops pytest.
        try:
            await server.serve()
        except SystemExit as e:
            raise RuntimeError(f"the gateway failed to start (exit {e.code})") from None

    task = asyncio.create_task(serve())
    try:
        await wait_for(lambda: server.started or task.done(), what="uvicorn to start")
        if task.done():
            await task
            raise RuntimeError("the gateway did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def migrated_redis(directory: Path) -> AsyncIterator[tuple[RedisServer, redis.Redis]]:
    """A private redis-server with the current layout applied, and a client of it; both
    stopped at the end."""
    server = RedisServer(directory)
    server.start()
    client = server.client()
    try:
        await migrate(client, Keys(), report=lambda _: None)
        yield server, client
    finally:
        await client.aclose()
        server.stop()


@contextlib.asynccontextmanager
async def running_stack(
    tmp_path: Path,
    *,
    concurrency: int = 4,
    handlers: dict[str, Handler] | None = None,
    **overrides: Any,
) -> AsyncIterator[str]:
    """A private Redis (migrated), a worker (with these handlers, default the built-in ones)
    and a gateway with these settings; yields the gateway's base URL."""
    async with migrated_redis(tmp_path / "redis") as (server, _):
        settings = make_settings(server.url, **overrides)
        async with (
            running_worker(settings, concurrency=concurrency, handlers=handlers),
            running_gateway(settings) as base,
        ):
            yield base


@contextlib.contextmanager
def service_process(url: str, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m service <args>` as a child; stopped by PID at the end."""
    # A file, not a pipe: a pipe nobody reads could fill up and block the child.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [*SERVICE, *args],
            env=service_env(url, **env),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            yield process
        finally:
            stop(process, timeout_s=20)  # SIGTERM, then SIGKILL: by PID


def gateway_process(
    url: str, port: int, **env: str
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """A gateway as a child process on `port` (with these settings in its environment), so
    that a test can kill and restart it, or read its memory and file descriptors."""
    return service_process(url, "gateway", "--port", str(port), **env)


async def ready(base: str) -> bool:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return await answers_ready(host, int(port))


class RefuseWebSockets:
    """A gateway behind something that refuses WebSocket upgrades (403), as some proxies do."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def serving(config: uvicorn.Config) -> AsyncIterator[str]:
    """Any ASGI app under a real uvicorn, in this event loop; yields its base URL."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), what="uvicorn to start")
        assert not task.done(), "the app did not start"
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


def refusing_websockets(settings: Settings) -> contextlib.AbstractAsyncContextManager[str]:
    """A gateway behind something that refuses WebSocket upgrades; yields its base URL."""
    config = uvicorn_config(settings, "127.0.0.1", free_port())
    config.app = RefuseWebSockets(config.app)
    return serving(config)
