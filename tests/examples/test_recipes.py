"""The recipes in examples/, run for real: a real broker (a private Redis), the job system's
own worker process, a real gateway and a real WebSocket client. In each, one task reports
progress, and one fails part-way through its first attempt and is retried by that system:
the client sees every event exactly once, in order, across the retry, and the terminal one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis.asyncio as redis

from service.config import Settings
from service.keys import Keys
from service.processes import stop
from service.producer import AsyncProducer
from tests.conftest import ROOT, service_env
from tests.processes import running_gateway
from tests.redis_servers import RedisServer
from tests.ws_client import connect

pytestmark = pytest.mark.slow

EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
STEPS, FAIL_AT = 20, 8


def worker_command(system: str, url: str) -> list[str]:
    return {
        "celery": [
            str(BIN / "celery"), "-A", "tasks", "worker", "--pool=solo", "--loglevel=INFO",
            "--without-heartbeat", "--without-mingle", "--without-gossip",
        ],
        "rq": [str(BIN / "rq"), "worker", "--url", url, "resultcast-example"],
        "dramatiq": [str(BIN / "dramatiq"), "tasks", "--processes", "1", "--threads", "2"],
        "arq": [str(BIN / "arq"), "tasks.WorkerSettings"],
    }[system]  # fmt: skip


@contextmanager
def worker_process(system: str, url: str) -> Iterator[subprocess.Popen[bytes]]:
    env = service_env(url)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{EXAMPLES / system}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            worker_command(system, url),
            cwd=EXAMPLES / system,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            stop(process, timeout_s=20)  # SIGTERM, then SIGKILL: by PID
            log.seek(0)
            print(f"--- {system} worker log ---\n{log.read().decode(errors='replace')[-4000:]}")


def load_tasks(system: str) -> ModuleType:
    """The recipe's tasks module, imported here as the app's backend imports it: as `tasks`,
    the name its worker knows it by (task names derive from it)."""
    spec = importlib.util.spec_from_file_location("tasks", EXAMPLES / system / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tasks"] = module
    spec.loader.exec_module(module)
    return module


async def submit(system: str, tasks: ModuleType, settings: Settings, fail_at: int) -> Any:
    if system == "arq":
        async with AsyncProducer(settings=settings) as producer:
            return await tasks.submit(producer, STEPS, fail_at)
    return await asyncio.to_thread(tasks.submit, STEPS, fail_at)


# arq 0.28 pins redis<6 and passes an argument redis-py 8 deprecates; its code runs on 8 (CI
# installs it without its pin, see pyproject.toml's `recipes` extra).
ARQ_ON_REDIS_PY_8 = [
    pytest.mark.filterwarnings(
        "ignore:Call to '__init__' function with deprecated usage:DeprecationWarning"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("arq") is None and not os.environ.get("CI"),
        reason="arq is not installed: pip install --no-deps 'arq==0.28.0' (it pins redis<6)",
    ),
]


@pytest.mark.parametrize(
    "system", ["celery", "rq", "dramatiq", pytest.param("arq", marks=ARQ_ON_REDIS_PY_8)]
)
async def test_a_recipe_delivers_progress_exactly_once_across_a_retry(
    system: str,
    settings: Settings,
    redis_server: RedisServer,
    migrated: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in service_env(redis_server.url).items():
        monkeypatch.setenv(name, value)
    tasks = load_tasks(system)
    try:
        async with running_gateway(settings) as base:
            with worker_process(system, redis_server.url):
                jobs = [
                    await submit(system, tasks, settings, fail_at=0),
                    await submit(system, tasks, settings, fail_at=FAIL_AT),
                ]
                async with connect(base) as ws:
                    got = await (await ws.watch_all(jobs, timeout_s=60))
    finally:
        sys.modules.pop("tasks", None)
        if hasattr(tasks, "producer"):
            tasks.producer.close()
    for job, _ in jobs:
        events = got[job][1:]  # after `watching`
        assert [e["seq"] for e in events] == list(range(1, STEPS + 2)), job
        assert [e["data"]["step"] for e in events[:-1]] == list(range(1, STEPS + 1))
        assert (events[-1]["event"], events[-1]["data"]) == ("done", {"steps": STEPS})
    attempts = [int(await migrated.hget(Keys().meta(job), "attempts") or 0) for job, _ in jobs]
    assert attempts == [1, 2], "the second task failed once and was retried by " + system
