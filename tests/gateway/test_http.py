"""HTTP intake and read-back: every path of the contract, against a real uvicorn server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from service import tokens
from service.config import Settings
from service.keys import Keys
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway, running_worker
from tests.redis_servers import RedisServer

KEYS = Keys()


@pytest.fixture
async def http(settings: Settings, migrated: redis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def test_submit_then_read_back(
    http: httpx.AsyncClient, settings: Settings, migrated: redis.Redis
) -> None:
    response = await http.post("/jobs", json={"kind": "count", "payload": {"n": 3}})
    assert response.status_code == 202
    body = response.json()
    job, token = body["job"], body["token"]
    assert set(body) == {"job", "token"}
    assert token == tokens.sign(job, "test-secret")

    queued = await http.get(f"/jobs/{job}", params={"token": token})
    assert queued.json() == {"job": job, "status": "queued", "events": []}

    async with running_worker(settings):

        async def done() -> Any:
            reply = (await http.get(f"/jobs/{job}", params={"token": token})).json()
            return reply if reply["status"] == "done" else None

        final = await wait_for(done, what="the job to finish")
    assert [(e["seq"], e["event"], e["data"]) for e in final["events"]] == [
        (1, "data", {"i": 1, "pad": ""}),
        (2, "data", {"i": 2, "pad": ""}),
        (3, "data", {"i": 3, "pad": ""}),
        (4, "done", {"count": 3}),
    ]
    for event in final["events"]:
        assert set(event) == {"type", "job", "id", "seq", "event", "data", "ts"}
        assert event["type"] == "event" and event["job"] == job
    after = final["events"][1]["id"]
    tail = (await http.get(f"/jobs/{job}", params={"token": token, "after": after})).json()
    assert [e["seq"] for e in tail["events"]] == [3, 4]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (b'{"kind": 7}', 400, "bad_request"),
        (b'{"payload": {}}', 400, "bad_request"),
        (b'{"kind": "count", "payload": [1]}', 400, "bad_request"),
        (b'{"kind": "count", "payload": {"n": "ten"}}', 400, "bad_request"),
        (b'{"kind": "count", "payload": {"n": -1}}', 400, "bad_request"),
        (b'{"kind": "sleep", "payload": {"seconds": true}}', 400, "bad_request"),
        (b'{"kind": "no-such-kind", "payload": {}}', 400, "unknown_kind"),
        (b"\xff\xfe", 400, "bad_request"),
    ],
)
async def test_bad_submissions(
    http: httpx.AsyncClient, body: bytes, status: int, code: str
) -> None:
    response = await http.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert_error(response, status, code)


async def test_oversize_body_is_refused(http: httpx.AsyncClient) -> None:
    huge = b'{"kind": "echo", "payload": {"x": "' + b"a" * (1024 * 1024) + b'"}}'
    json_type = {"content-type": "application/json"}
    assert_error(await http.post("/jobs", content=huge, headers=json_type), 413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(20):
            yield b"a" * 65536

    assert_error(await http.post("/jobs", content=chunks(), headers=json_type), 413, "too_large")


async def test_reading_jobs_needs_the_right_token(http: httpx.AsyncClient) -> None:
    job = (await http.post("/jobs", json={"kind": "echo", "payload": {}})).json()["job"]
    assert_error(await http.get(f"/jobs/{job}"), 403, "forbidden")
    assert_error(await http.get(f"/jobs/{job}", params={"token": "forged"}), 403, "forbidden")
    other = tokens.sign(job, "another-secret")
    assert_error(await http.get(f"/jobs/{job}", params={"token": other}), 403, "forbidden")
    # A valid token for a job that does not exist (or expired).
    ghost = "ghost-job"
    token = tokens.sign(ghost, "test-secret")
    assert_error(await http.get(f"/jobs/{ghost}", params={"token": token}), 404, "not_found")
    assert_error(await http.get("/jobs/bad%20id", params={"token": token}), 400, "bad_request")
    good = tokens.sign(job, "test-secret")
    assert_error(
        await http.get(f"/jobs/{job}", params={"token": good, "after": "x"}), 400, "bad_request"
    )


async def test_api_keys_guard_submission(redis_server: RedisServer, migrated: redis.Redis) -> None:
    settings = make_settings(redis_server.url, api_keys=("k1", "k2"))
    async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
        job = {"kind": "echo", "payload": {}}
        assert_error(await http.post("/jobs", json=job), 401, "unauthorized")
        wrong = {"authorization": "Bearer nope"}
        assert_error(await http.post("/jobs", json=job, headers=wrong), 401, "unauthorized")
        for key in ("k1", "k2"):
            ok = await http.post("/jobs", json=job, headers={"authorization": f"Bearer {key}"})
            assert ok.status_code == 202


async def test_token_rotation_accepts_old_keys(
    redis_server: RedisServer, migrated: redis.Redis
) -> None:
    old = make_settings(redis_server.url, secret_key="old")
    new = make_settings(redis_server.url, secret_key="new", secret_key_fallbacks=("old",))
    async with running_gateway(old) as base, httpx.AsyncClient(base_url=base) as http:
        reply = (await http.post("/jobs", json={"kind": "echo", "payload": {}})).json()
    async with running_gateway(new) as base, httpx.AsyncClient(base_url=base) as http:
        ok = await http.get(f"/jobs/{reply['job']}", params={"token": reply["token"]})
        assert ok.status_code == 200
        fresh = (await http.post("/jobs", json={"kind": "echo", "payload": {}})).json()
        assert fresh["token"] == tokens.sign(fresh["job"], "new")


async def test_health_and_unknown_routes(
    http: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/readyz")).json() == {"status": "ready"}
    assert_error(await http.get("/nope"), 404, "not_found")
    assert_error(await http.delete("/jobs"), 405, "bad_request")
    redis_server.stop()

    async def not_ready() -> bool:
        return (await http.get("/readyz")).status_code == 503

    await wait_for(not_ready, what="/readyz to turn 503")
    assert (await http.get("/healthz")).status_code == 200
    assert_error(await http.post("/jobs", json={"kind": "echo"}), 503, "unavailable")


async def test_the_demo_page_is_served(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/static/resultcast.js" in page.text and "/metrics" in page.text
    module = await http.get("/static/resultcast.js")
    assert module.status_code == 200
    assert module.headers["content-type"].startswith("text/javascript")
    assert "export function watch" in module.text
    missing = await http.get("/static/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_an_unknown_kind_names_the_kinds_there_are(http: httpx.AsyncClient) -> None:
    response = await http.post("/jobs", json={"kind": "cuont", "payload": {}})
    assert_error(response, 400, "unknown_kind")
    message = response.json()["error"]["message"]
    assert "'cuont'" in message, message
    known = message.split("(known: ", 1)[1].rstrip(")").split(", ")
    assert {"count", "echo", "fail", "sleep"} <= set(known), message


async def test_a_method_not_allowed_says_which_are(http: httpx.AsyncClient) -> None:
    response = await http.delete("/jobs")
    assert_error(response, 405, "bad_request")
    assert response.headers["allow"] == "POST", response.headers


@pytest.mark.parametrize(
    ("kind", "payload"),
    [("sleep", {"seconds": 601}), ("count", {"n": 700, "interval_ms": 1000})],
)
async def test_a_built_in_job_that_would_outlive_its_time_limit_is_refused(
    http: httpx.AsyncClient, kind: str, payload: dict[str, Any]
) -> None:
    response = await http.post("/jobs", json={"kind": kind, "payload": payload})
    assert_error(response, 400, "bad_request")
    assert "JOB_TIMEOUT_S" in response.json()["error"]["message"]
