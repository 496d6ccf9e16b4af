"""`python -m service dev`: the whole stack from one command, and nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PYTHON, ROOT, wait_for
from tests.redis_servers import free_port


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    stack = [pid]
    while stack:
        current = stack.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = (
                (task / "children").read_text().split() if (task / "children").exists() else []
            )
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_dev_runs_a_job_end_to_end_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SECRET_KEY"))}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, watched by polling HTTP
        [PYTHON, "-m", "service", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    children: set[int] = set()
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    assert process.poll() is None, "dev exited early"
                    return False

            await wait_for(ready, timeout_s=30, interval_s=0.1, what="/readyz 200")
            children = _descendants(process.pid)
            assert len(children) >= 4  # redis-server, gateway, two workers

            reply = (await http.post("/jobs", json={"kind": "count", "payload": {"n": 3}})).json()

            async def done() -> dict[str, Any] | None:
                params = {"token": reply["token"]}
                body: dict[str, Any] = (
                    await http.get(f"/jobs/{reply['job']}", params=params)
                ).json()
                return body if body["status"] == "done" else None

            final = await wait_for(done, timeout_s=20, what="the count job")
        assert [e["seq"] for e in final["events"]] == [1, 2, 3, 4]
        assert (tmp_path / ".data" / "redis.log").exists()
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=40)[0].decode()
    assert process.returncode == 0, output
    assert "demo page at http://localhost:" in output
    assert "dev: stopped" in output
    assert [pid for pid in children if _alive(pid)] == []
