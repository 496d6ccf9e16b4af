"""`python -m service dev`: the whole stack from one command, and nothing left behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from service.processes import SERVICE
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
        [*SERVICE, "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    children: set[int] = set()
    announced = ""
    try:
        base = f"http://127.0.0.1:{port}"
        # dev says where the demo page is once the gateway answers (checked there).
        announced = await asyncio.wait_for(asyncio.to_thread(_announced, process, port), 30)
        async with httpx.AsyncClient(base_url=base) as http:
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

            # A producer joins the stack with the lines dev printed, and nothing else.
            produced = await asyncio.to_thread(_produce_with_exports, announced, tmp_path)
            params = {"token": produced["token"]}
            body = (await http.get(f"/jobs/{produced['job']}", params=params)).json()
            assert [e["event"] for e in body["events"]] == ["data", "done"], body
            # Routine traffic that must not add INFO lines: polls and a WebSocket.
            for path in ("/metrics", "/healthz", "/readyz"):
                assert (await http.get(path)).status_code == 200
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send('{"op": "ping"}')
                await ws.recv()
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=40)[0].decode()
    assert process.returncode == 0, announced + output
    assert "demo page at http://localhost:" in announced
    assert announced.count("http://") == 1, announced  # one URL to open, not uvicorn's too
    assert "dev: stopped" in output
    assert [pid for pid in children if _alive(pid)] == []
    for routine in ("GET /metrics", "GET /healthz", "GET /readyz", "connection open"):
        assert routine not in announced + output, routine
    assert "uvicorn.error" not in announced + output


def _produce_with_exports(announced: str, directory: Path) -> dict[str, str]:
    """Run a producer in a shell that has only dev's export lines for Redis and the key."""
    exports = [line.strip() for line in announced.splitlines() if line.startswith("  export ")]
    assert [line.split("=", 1)[0] for line in exports] == [
        "export REDIS_URL",
        "export SECRET_KEY",
    ], announced
    program = (
        "import json; from service.producer import Producer\n"
        "with Producer() as producer:\n"
        "    job, token = producer.create()\n"
        "    with producer.open(job) as j:\n"
        "        j.emit({'step': 1}); j.done({'ok': True})\n"
        "print(json.dumps({'job': job, 'token': token}))"
    )
    script = "\n".join([*exports, f'exec {PYTHON} -c "$PROGRAM"'])
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=directory,
        env=_env() | {"PROGRAM": program},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    produced: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return produced


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SECRET_KEY"))}
    return env | {"PYTHONPATH": str(ROOT)}


def _dev(directory: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*SERVICE, "dev", "--port", str(port), "--workers", "1"],
        cwd=directory,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _announced(process: subprocess.Popen[bytes], port: int) -> str:
    """Read dev's output until it announces the demo page (only once the gateway answers)."""
    assert process.stdout is not None
    lines = []
    for raw in process.stdout:
        line = raw.decode()
        lines.append(line)
        if "demo page at" in line:
            reply = httpx.get(f"http://127.0.0.1:{port}/readyz")
            assert reply.status_code == 200, "announced before the gateway answered"
            return "".join(lines)
    raise AssertionError("dev ended without announcing the demo page:\n" + "".join(lines))


def _stopped(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=40)[0].decode()
    assert process.returncode == 0, output
    return output


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dev_twice_is_refused_and_a_restart_keeps_tokens_working(tmp_path: Path) -> None:
    port = free_port()
    first = _dev(tmp_path, port)
    try:
        _announced(first, port)
        job = httpx.post(
            f"http://127.0.0.1:{port}/jobs", json={"kind": "echo", "payload": {"hi": 1}}
        ).json()
        # The same data directory: refused before anything starts.
        again = subprocess.run(
            [*SERVICE, "dev", "--port", str(free_port())],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert again.returncode == 1 and "another `python -m service dev`" in again.stderr
        # Another directory, the same port: refused, with what to do.
        (tmp_path / "other").mkdir()
        taken = subprocess.run(
            [*SERVICE, "dev", "--port", str(port)],
            cwd=tmp_path / "other",
            env=_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert taken.returncode == 1 and f"port {port}" in taken.stderr, taken.stderr
        assert "--port" in taken.stderr and "started redis-server" not in taken.stdout
    finally:
        _stopped(first)
    key_file = tmp_path / ".data" / "dev-secret-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    restarted = _dev(tmp_path, port)
    try:
        _announced(restarted, port)
        reply = httpx.get(
            f"http://127.0.0.1:{port}/jobs/{job['job']}", params={"token": job["token"]}
        )
        assert reply.status_code == 200, reply.text  # the old token is still valid
    finally:
        _stopped(restarted)
