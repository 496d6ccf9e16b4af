"""Hostile input, each probe rerun against a real gateway and worker: refused or bounded.

Every answer keeps the contract's error shape, and a client's own mistake never makes the
service log an ERROR line (nor a secret).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.handlers import Handler, Job, time_limit
from service.logs import RedactSecrets
from tests.conftest import wait_for
from tests.processes import running_stack

JSON = {"content-type": "application/json"}


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def final_event(http: httpx.AsyncClient, job: str, token: str) -> dict[str, Any]:
    async def terminal() -> dict[str, Any] | None:
        events = (await http.get(f"/jobs/{job}", params={"token": token})).json()["events"]
        return events[-1] if events and events[-1]["event"] != "data" else None

    event: dict[str, Any] = await wait_for(terminal, timeout_s=20, what=f"job {job} to end")
    return event


async def submit(http: httpx.AsyncClient, kind: str, payload: Any) -> tuple[str, str]:
    reply = await http.post("/jobs", json={"kind": kind, "payload": payload})
    assert reply.status_code == 202, reply.text
    body = reply.json()
    return body["job"], body["token"]


async def test_only_json_bodies_are_taken(tmp_path: Path) -> None:
    """A cross-site form cannot send `application/json`: it cannot submit a job."""
    body = b'{"kind": "echo", "payload": {}}'
    async with running_stack(tmp_path) as base, httpx.AsyncClient(base_url=base) as http:
        for content_type in ("application/x-www-form-urlencoded", "text/plain", "", None):
            headers = {} if content_type is None else {"content-type": content_type}
            reply = await http.post("/jobs", content=body, headers=headers)
            assert reply.status_code == 415, (content_type, reply.text)
            assert reply.json()["error"]["code"] == "bad_request"
        for content_type in ("application/json", "Application/JSON; charset=utf-8"):
            reply = await http.post("/jobs", content=body, headers={"content-type": content_type})
            assert reply.status_code == 202, reply.text


@pytest.mark.parametrize("depth", [255, 256, 700, 1022])
async def test_deeply_nested_payloads_are_refused_not_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    nested = "[" * depth + "]" * depth
    body = f'{{"kind": "echo", "payload": {{"x": {nested}}}}}'.encode()
    async with running_stack(tmp_path) as base, httpx.AsyncClient(base_url=base) as http:
        reply = await http.post("/jobs", content=body, headers=JSON)
        assert reply.status_code == 400, reply.text
        assert "nested too deeply" in reply.json()["error"]["message"]
        await submit(http, "echo", {"still": "working"})
    assert errors_logged(caplog) == []


@pytest.mark.parametrize(
    ("payload", "limit"),
    [
        ({"n": 300, "size": 1048576}, "MAX_EVENT_BYTES"),  # the probe: 300 events of 1 MiB
        ({"n": 300, "size": 1_000_000}, "MAX_JOB_BYTES"),
        ({"n": 999_999, "size": 100}, "MAX_JOB_BYTES"),
    ],
)
async def test_built_in_jobs_that_imply_too_many_bytes_are_refused(
    tmp_path: Path, payload: dict[str, int], limit: str
) -> None:
    async with running_stack(tmp_path) as base, httpx.AsyncClient(base_url=base) as http:
        reply = await http.post("/jobs", json={"kind": "count", "payload": payload})
        assert reply.status_code == 400, reply.text
        assert limit in reply.json()["error"]["message"]
        huge = {"x": "a" * (1024 * 1024 - 100)}  # fits the body limit, not one event
        reply = await http.post("/jobs", json={"kind": "echo", "payload": huge})
        assert reply.status_code == 400 and "MAX_EVENT_BYTES" in reply.text


async def test_a_percent_encoded_token_is_masked_in_the_access_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RedactSecrets())  # what `logs.configure` installs
    async with running_stack(tmp_path) as base, httpx.AsyncClient(base_url=base) as http:
        job, token = await submit(http, "echo", {})
        reply = await http.get(f"{base}/jobs/{job}?%74oken={token}")
        assert reply.status_code == 200  # the server reads it as `token`, so it is one
        await wait_for(lambda: f"/jobs/{job}?" in caplog.text, what="the access log line")
    assert token not in caplog.text


async def test_a_client_that_abandons_its_request_body_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_stack(tmp_path) as base:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        for _ in range(5):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"kind": "ec'
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        await wait_for(
            lambda: caplog.text.count("went away before sending its whole request body") == 5,
            what="the five aborted bodies",
        )
    assert errors_logged(caplog) == []


async def test_connections_that_never_complete_their_headers_are_closed(tmp_path: Path) -> None:
    async with running_stack(tmp_path, request_header_timeout_s=0.5) as base:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        silent = await asyncio.open_connection(host, int(port))
        trickling = await asyncio.open_connection(host, int(port))
        trickling[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for reader, writer in (silent, trickling):
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
            writer.close()
            await writer.wait_closed()
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/healthz")).status_code == 200


async def test_a_job_past_its_time_limit_is_failed_and_frees_its_slot(tmp_path: Path) -> None:
    @time_limit(0.5)
    async def impatient(job: Job) -> Any:
        await asyncio.sleep(30)

    # "nap" is a sleep the gateway does not validate: "sleep" over JOB_TIMEOUT_S is refused.
    handlers: dict[str, Handler] = {"impatient": impatient, "nap": _sleep, "echo": _echo}
    async with (
        running_stack(tmp_path, concurrency=1, job_timeout_s=1.0, handlers=handlers) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        job, token = await submit(http, "nap", {"seconds": 30})
        event = await final_event(http, job, token)
        assert event["event"] == "failed"
        assert "time limit of 1 s (JOB_TIMEOUT_S)" in event["data"]["message"]
        job, token = await submit(http, "impatient", {})
        assert "time limit of 0.5 s" in (await final_event(http, job, token))["data"]["message"]
        job, token = await submit(http, "echo", {"after": "them"})  # the one slot is free
        assert (await final_event(http, job, token))["event"] == "done"


async def _sleep(job: Job) -> Any:
    await asyncio.sleep(job.payload["seconds"])


async def _echo(job: Job) -> Any:
    return job.payload


async def test_a_job_over_its_byte_limits_is_failed_saying_which(tmp_path: Path) -> None:
    async def one_huge_event(job: Job) -> Any:
        await job.emit({"pad": "x" * 60_000})

    async def many_events(job: Job) -> Any:
        for i in range(100):
            await job.emit({"i": i, "pad": "x" * 5_000})

    handlers: dict[str, Handler] = {"huge": one_huge_event, "many": many_events}
    async with (
        running_stack(
            tmp_path, handlers=handlers, max_event_bytes=50_000, max_job_bytes=100_000
        ) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        job, token = await submit(http, "huge", {})
        event = await final_event(http, job, token)
        assert (event["seq"], event["event"]) == (1, "failed")
        assert "MAX_EVENT_BYTES" in event["data"]["message"]
        job, token = await submit(http, "many", {})
        event = await final_event(http, job, token)
        assert event["event"] == "failed" and "MAX_JOB_BYTES" in event["data"]["message"]
        # What was written before the limit stays, and stays under it.
        events = (await http.get(f"/jobs/{job}", params={"token": token})).json()["events"]
        assert 15 <= len(events) - 1 <= 20
