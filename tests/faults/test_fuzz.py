"""Bad input, fuzzed: every frame and body gets a contract-shaped answer, nothing breaks.

The gateway runs as its own process (one per module); hypothesis drives it with synchronous
clients, and the process must never log a traceback for a client's mistake.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from service.processes import SERVICE
from tests.conftest import ROOT, service_env
from tests.redis_servers import RedisServer, free_port

pytestmark = pytest.mark.slow

ERROR_CODES = {
    "bad_request",
    "unauthorized",
    "not_found",
    "too_many_watches",
    "gone",
    "busy",
    "capacity",
    "unavailable",
}


class Gateway:
    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.log = log
        self.http = httpx.Client(base_url=base, timeout=10)
        self._sockets = ExitStack()
        self.ws = self._open()

    def _open(self) -> ClientConnection:
        url = self.base.replace("http", "ws") + "/ws"
        return self._sockets.enter_context(ws_connect(url, max_size=None))

    def reconnect(self) -> None:
        self.ws.close()
        self.ws = self._open()

    def close(self) -> None:
        self._sockets.close()
        self.http.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("fuzz")
    server = RedisServer(tmp / "redis")
    server.start()
    subprocess.run(
        [*SERVICE, "migrate"],
        env=service_env(server.url),
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    log = tmp / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*SERVICE, "gateway", "--port", str(port)],
            env=service_env(server.url, MAX_BAD_FRAMES_PER_MIN="1000000"),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    gw = Gateway(base, log)
    try:
        yield gw
    finally:
        gw.close()
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        server.stop()
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        assert " ERROR " not in text, text[-3000:]  # a client's mistake is not our error


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    _containers,
    max_leaves=20,
)
frames = st.one_of(
    st.text(max_size=300),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"op": st.sampled_from(["watch", "unwatch", "ping", "WATCH", ""]) | json_values},
        optional={
            "job": json_values | st.text(alphabet="abc/../%\\{}*-_", max_size=70),
            "token": json_values,
            "after": json_values | st.text(max_size=30),
        },
    ).map(json.dumps),
    st.integers(min_value=0, max_value=1100).map(lambda depth: "[" * depth + "]" * depth),
    st.just('{"op": "watch", "job": "j", "token": "t", "after": "99999999999999999999999-0"}'),
)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def reply_to(gateway: Gateway, frame: str | bytes) -> dict[str, Any]:
    gateway.ws.send(frame)
    reply: dict[str, Any] = json.loads(gateway.ws.recv(timeout=10))
    return reply


@FUZZ
@given(frame=frames)
def test_any_text_frame_gets_a_contract_answer(gateway: Gateway, frame: str) -> None:
    reply = reply_to(gateway, frame)
    if reply["type"] == "error":
        assert reply["code"] in ERROR_CODES
        assert isinstance(reply["message"], str) and reply["message"]
    else:
        assert reply["type"] in {"pong", "watching", "unwatched"}
    if reply["type"] == "watching":
        gateway.reconnect()  # drop the watch so the next example starts clean
    else:
        assert reply_to(gateway, '{"op": "ping"}') == {"type": "pong"}


@FUZZ
@given(payload=st.binary(max_size=300))
def test_any_binary_frame_is_refused(gateway: Gateway, payload: bytes) -> None:
    reply = reply_to(gateway, payload)
    assert (reply["type"], reply["code"]) == ("error", "bad_request")


@FUZZ
@given(
    body=st.binary(max_size=500)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries({"kind": json_values, "payload": json_values}).map(
        lambda v: json.dumps(v).encode()
    )
)
def test_any_submission_body_gets_a_contract_answer(gateway: Gateway, body: bytes) -> None:
    reply = gateway.http.post("/jobs", content=body, headers={"content-type": "application/json"})
    if reply.status_code == 202:
        assert set(reply.json()) == {"job", "token"}
    else:
        assert reply.status_code in (400, 413)
        error = reply.json()["error"]
        assert error["code"] in {"bad_request", "unknown_kind", "too_large"}


MiB = 1024 * 1024
built_in_payloads = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "n": st.integers(min_value=-5, max_value=10**12),
            "size": st.integers(min_value=-5, max_value=4 * MiB),
            "interval_ms": st.integers(min_value=-5, max_value=10**6),
            "seconds": st.integers(min_value=-5, max_value=10**6) | st.floats(allow_nan=False),
            "message": st.text(max_size=50),
        },
    ).map(json.dumps),
    json_values.map(lambda v: json.dumps({"x": v})),
    st.integers(min_value=0, max_value=1100).map(lambda d: '{"x": ' + "[" * d + "]" * d + "}"),
    st.integers(min_value=0, max_value=MiB).map(lambda n: json.dumps({"x": "a" * n})),
)


@FUZZ
@given(kind=st.sampled_from(["count", "echo", "sleep", "fail"]), payload=built_in_payloads)
def test_built_in_jobs_are_refused_or_bounded(gateway: Gateway, kind: str, payload: str) -> None:
    """A payload is refused (400, 413) unless what it asks for fits the byte limits."""
    body = f'{{"kind": "{kind}", "payload": {payload}}}'.encode()
    reply = gateway.http.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert reply.status_code in (202, 400, 413), reply.text
    if reply.status_code != 202:
        assert reply.json()["error"]["code"] in {"bad_request", "too_large"}
        return
    value = json.loads(payload)
    if kind == "count":  # the defaults: MAX_EVENT_BYTES 1 MiB, MAX_JOB_BYTES 64 MiB
        data = value.get("size", 0) + len('{"i":,"pad":""}') + len(str(value["n"]))
        assert data <= MiB and value["n"] * data <= 64 * MiB
    elif kind in ("echo", "fail"):
        assert len(payload) <= MiB


@FUZZ
@given(job=st.text(max_size=80), token=st.text(max_size=50), after=st.text(max_size=30))
def test_any_job_read_gets_a_contract_answer(
    gateway: Gateway, job: str, token: str, after: str
) -> None:
    reply = gateway.http.get(
        f"/jobs/{quote(job, safe='')}", params={"token": token, "after": after}
    )
    assert reply.status_code in (400, 403, 404, 405)
    assert set(reply.json()) == {"error"}
