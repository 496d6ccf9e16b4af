"""The image's HEALTHCHECK command, run as a child process against real servers."""

from __future__ import annotations

import asyncio
import subprocess
from urllib.parse import urlsplit

from service.healthcheck import main_command
from service.keys import Keys
from service.migrate import migrate
from service.processes import SERVICE
from tests.conftest import ROOT, make_settings, service_env
from tests.processes import running_gateway
from tests.redis_servers import RedisServer, free_port


async def healthcheck(url: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *SERVICE, "healthcheck", *args,
        env=service_env(url), cwd=ROOT, stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode().strip()


def test_the_role_is_read_from_the_main_command_line() -> None:
    argv = ["/opt/venv/bin/python", "-m", "service", "gateway", "--host", "0.0.0.0", "--port", "80"]
    assert main_command(argv) == ("gateway", {"--host": "0.0.0.0", "--port": "80"})
    assert main_command(["python", "-m", "service", "worker"]) == ("worker", {})
    assert main_command(["redis-server"]) == ("", {})


async def test_a_gateway_is_healthy_while_ready(redis_server: RedisServer) -> None:
    client = redis_server.client()
    await migrate(client, Keys(), report=lambda _: None)
    await client.aclose()
    async with running_gateway(make_settings(redis_server.url)) as base:
        port = str(urlsplit(base).port)
        rc, out = await healthcheck(redis_server.url, "--role", "gateway", "--port", port)
        assert (rc, out.split(":")[0]) == (0, "healthy"), out
    rc, out = await healthcheck(redis_server.url, "--role", "gateway", "--port", port)
    assert (rc, out.split(":")[0]) == (1, "unhealthy"), out


async def test_a_worker_is_healthy_while_redis_answers(redis_server: RedisServer) -> None:
    rc, out = await healthcheck(redis_server.url, "--role", "worker")
    assert (rc, out) == (0, "healthy: Redis answers")
    rc, out = await healthcheck(f"redis://127.0.0.1:{free_port()}/0", "--role", "worker")
    assert rc == 1 and out.startswith("unhealthy: Redis does not answer"), out
