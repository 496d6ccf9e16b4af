"""The gateway mounted inside an existing FastAPI app (examples/fastapi), under real uvicorn:
the host app's lifespan starts and stops it, and a client watches through the mounted path."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import httpx
import pytest
import redis.asyncio as redis
import uvicorn

from tests.conftest import ROOT, service_env
from tests.processes import serving
from tests.redis_servers import RedisServer, free_port
from tests.ws_client import connect

pytestmark = pytest.mark.slow


def load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("app", ROOT / "examples/fastapi/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop("app", None)
    return module


async def test_a_client_watches_through_the_gateway_mounted_in_a_fastapi_app(
    redis_server: RedisServer, migrated: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in service_env(redis_server.url).items():
        monkeypatch.setenv(name, value)
    example = load_app()
    config = uvicorn.Config(
        example.app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="on"
    )
    async with serving(config) as base, httpx.AsyncClient(base_url=base) as http:
        reply = await http.post("/reports", params={"steps": 15})
        assert reply.status_code == 200, reply.text
        job, token = reply.json()["job"], reply.json()["token"]
        async with connect(f"{base}/results") as ws:
            await ws.watch(job, token)
            frames = (await ws.events_until_terminal({job}))[job]
        events = frames[1:]
        assert [e["seq"] for e in events] == list(range(1, 17))
        assert [e["data"]["step"] for e in events[:-1]] == list(range(1, 16))
        assert events[-1]["event"] == "done"
        # The gateway's HTTP routes and the browser client, under the mount too.
        snapshot = await http.get(f"/results/jobs/{job}", params={"token": token})
        assert snapshot.status_code == 200 and snapshot.json()["status"] == "done"
        assert (await http.get(f"/results/jobs/{job}", params={"token": "x"})).status_code == 403
        assert (await http.get("/results/readyz")).status_code == 200
        script = await http.get("/results/static/resultcast.js")
        assert script.status_code == 200 and "GATEWAY_ROOT" in script.text
        page = await http.get("/results/")
        assert page.status_code == 200 and "./static/resultcast.js" in page.text
