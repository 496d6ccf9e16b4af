from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from service.config import Settings
from service.keys import Keys
from service.migrate import migrate
from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent


class _Errors(logging.Handler):
    """Keeps the ERROR lines the service's own code logs in this process."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("service"):
            self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(autouse=True)
def no_unexpected_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """An ERROR from the service's code (running in the test's process) fails the test,
    unless the test is marked `logs_errors` (it provokes them on purpose): a bug that the
    service survives by restarting a loop still shows (as the xread KeyError did)."""
    handler = _Errors()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    if handler.lines and request.node.get_closest_marker("logs_errors") is None:
        pytest.fail("the service logged errors:\n" + "\n".join(handler.lines[:10]))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that keeps every write across SIGKILL (append-only file, fsync always)."""
    server = RedisServer(
        tmp_path / "redis", args=("--appendonly", "yes", "--appendfsync", "always")
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": url,
        "secret_key": "test-secret",
        "worker_block_ms": 200,
        "job_visibility_s": 2.0,
        "maintenance_interval_s": 0.5,
        "worker_stop_grace_s": 3.0,
        "redis_socket_timeout_s": 2.0,
        "redis_connect_timeout_s": 1.0,
        # CI runs the WebSocket tests on both send paths (WEBSOCKET_SEND=asgi the second time).
        "websocket_send": os.environ.get("WEBSOCKET_SEND", "fast"),
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return make_settings(redis_server.url)


@pytest.fixture
async def rclient(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    client = redis_server.client()
    yield client
    await client.aclose()


@pytest.fixture
async def migrated(rclient: redis.Redis) -> redis.Redis:
    await migrate(rclient, Keys(), report=lambda _line: None)
    return rclient


def service_env(url: str, **extra: str) -> dict[str, str]:
    """Environment for a `python -m service` child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SECRET_", "API_"))}
    env.update(REDIS_URL=url, SECRET_KEY="test-secret", PYTHONPATH=str(ROOT), **extra)
    return env


PYTHON = sys.executable


async def entries(client: redis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """A whole stream, typed the way RESP2 answers it."""
    reply: Any = await client.xrange(key)
    return [(entry_id, fields) for entry_id, fields in reply]


async def wait_for(
    predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.02, what: str = ""
) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy, or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        await asyncio.sleep(interval_s)
