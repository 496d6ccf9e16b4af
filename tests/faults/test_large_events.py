"""A job of megabyte events, end to end with real processes: bytes stay bounded everywhere.

The probe that used to take a worker to 1.36 GB, Redis's subscriber output buffers past their
limit and a gateway to 968 MB: now the oversized job is refused at intake, and a job just under
`MAX_JOB_BYTES` runs with every process holding a small multiple of the byte limits, while a
client receives every event once and `GET /jobs` answers in pages of bounded size.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.aio import stop_tasks
from tests.conftest import wait_for
from tests.processes import gateway_process, migrated_redis, ready, service_process
from tests.redis_servers import free_port
from tests.test_metrics import samples
from tests.ws_client import assert_exact, connect

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
EVENTS, SIZE = 40, 1_000_000  # 40 MB: under MAX_JOB_BYTES (64 MiB), events under 1 MiB


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Peaks:
    """Growth of each process's RSS and of Redis's memory over their start, and the largest
    subscriber output buffer in Redis, sampled every 10 ms while the job runs."""

    def __init__(self, client: Any, pids: dict[str, int]) -> None:
        self._client, self._pids = client, pids
        self._start = {name: rss_mib(pid) for name, pid in pids.items()}
        self.mib = dict.fromkeys([*pids, "subscriber_omem", "redis"], 0.0)
        self._redis_start: float | None = None

    async def sample(self) -> None:
        while True:
            memory: Any = await self._client.info("memory")
            used = memory["used_memory"] / MiB
            self._redis_start = used if self._redis_start is None else self._redis_start
            self.mib["redis"] = max(self.mib["redis"], used - self._redis_start)
            for name, pid in self._pids.items():
                self.mib[name] = max(self.mib[name], rss_mib(pid) - self._start[name])
            subscribers: Any = await self._client.client_list(_type="pubsub")
            omem = max((int(c["omem"]) for c in subscribers), default=0) / MiB
            self.mib["subscriber_omem"] = max(self.mib["subscriber_omem"], omem)
            await asyncio.sleep(0.01)  # the sampling period, not a wait for anything


async def watched_events(base: str, job: str, token: str, peaks: Peaks) -> list[dict[str, Any]]:
    sampler = asyncio.create_task(peaks.sample())
    try:
        async with connect(base) as ws:
            await ws.watch(job, token)
            frames = (await ws.events_until_terminal({job}, timeout_s=90))[job]
    finally:
        # redis-py can swallow a cancellation that races with a command's reply, and a
        # sampler that swallowed it samples on forever: cancelled until it ends.
        await stop_tasks([sampler])
    return [f for f in frames if f["type"] == "event"]


async def read_in_pages(
    http: httpx.AsyncClient, job: str, token: str
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every event through GET, page after page (`more`: ask again after the last id)."""
    events: list[dict[str, Any]] = []
    sizes: list[int] = []
    params = {"token": token}
    while True:
        reply = await http.get(f"/jobs/{job}", params=params)
        assert reply.status_code == 200
        sizes.append(len(reply.content))
        body = reply.json()
        events += body["events"]
        if not body.get("more"):
            return events, sizes
        params["after"] = body["events"][-1]["id"]


async def test_a_job_of_megabyte_events_stays_within_the_byte_limits(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with migrated_redis(tmp_path / "redis") as (server, client):
        with (
            gateway_process(server.url, port) as gateway,
            service_process(server.url, "worker", "--concurrency", "2") as worker,
        ):
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                await wait_for(lambda: ready(base), timeout_s=30, what="the gateway")
                peaks = Peaks(client, {"gateway": gateway.pid, "worker": worker.pid})
                probe = {"kind": "count", "payload": {"n": 300, "size": MiB}}
                assert (await http.post("/jobs", json=probe)).status_code == 400
                body = {"kind": "count", "payload": {"n": EVENTS, "size": SIZE}}
                reply = await http.post("/jobs", json=body)
                assert reply.status_code == 202, reply.text
                job, token = reply.json()["job"], reply.json()["token"]

                assert_exact(await watched_events(base, job, token, peaks), job, EVENTS)
                events, sizes = await read_in_pages(http, job, token)
                assert_exact(events, job, EVENTS)
                metrics = samples((await http.get("/metrics")).text)
        print(f"\npeaks over start (MiB): {peaks.mib}; GET pages: {len(sizes)}, max {max(sizes)}")
        # MAX_SEND_QUEUE_BYTES (4 MiB) bounds a GET page, plus its one event over it.
        assert max(sizes) <= 4 * MiB + SIZE + 4096 and len(sizes) >= 10
        # Notifications of large events carry their position only: no subscriber falls behind.
        assert peaks.mib["subscriber_omem"] < 1
        reconnects = [v for (name, _), v in metrics.items() if "subscriber_reconnects" in name]
        assert reconnects == [0]
        # A worker queues at most 8 MiB of events and writes at most 8 MiB a round trip;
        # a gateway holds one socket's queue (4 MiB) and a page for it.
        assert peaks.mib["worker"] < 64, peaks.mib
        assert peaks.mib["gateway"] < 48, peaks.mib
        # Redis holds the job (40 MB, under MAX_JOB_BYTES) and little else.
        assert peaks.mib["redis"] < 64 * 1.5, peaks.mib
