"""Load on a cluster that a single Redis takes in its stride: many commands and pipelines at
once from one process. redis-py's cluster client refuses a command when its node's
connections are all busy, and a pipeline meeting that refusal closes the whole client;
ours waits for a connection instead (`service.cluster_client`)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from service.keys import Keys
from service.producer import AsyncProducer
from service.redis_client import RedisFactory
from tests.cluster.test_cluster_faults import stack_on
from tests.conftest import make_settings, wait_for
from tests.redis_cluster import LocalCluster
from tests.ws_client import assert_exact, connect, submit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


async def test_commands_and_pipelines_wait_for_a_connection(cluster: LocalCluster) -> None:
    settings = make_settings(cluster.url, redis_cluster=True, redis_max_connections=2)
    client: Any = RedisFactory(settings, "worker").commands()

    async def one(i: int) -> Any:
        key = f"load:{{{i}}}"
        if i % 4:
            await client.set(key, i)
            return int(await client.get(key))
        pipe = client.pipeline()
        pipe.set(key, i)
        pipe.incr(key)
        return (await pipe.execute())[1] - 1

    try:
        assert await asyncio.gather(*(one(i) for i in range(400))) == list(range(400))
    finally:
        await client.aclose()


async def test_a_burst_of_jobs_on_a_cluster_is_neither_refused_nor_broken(
    cluster: LocalCluster,
) -> None:
    """Submissions 32 at a time to one gateway, a worker at concurrency 58 over 3 streams:
    every job is accepted and finishes (it used to be 503s and jobs failing on a closed
    connection)."""
    async with (
        stack_on(cluster, concurrency=58, job_streams=3) as (_, [base]),
        httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=32)) as http,
    ):

        async def submitted(i: int) -> tuple[str, str]:
            body = {"kind": "count", "payload": {"n": 5, "interval_ms": 0}}
            reply = await http.post("/jobs", json=body)
            assert reply.status_code == 202, reply.text
            return reply.json()["job"], reply.json()["token"]

        jobs = await asyncio.gather(*(submitted(i) for i in range(250)))

        async def all_done() -> bool:
            replies = await asyncio.gather(
                *(http.get(f"/jobs/{job}", params={"token": token}) for job, token in jobs)
            )
            return all(r.json()["status"] == "done" for r in replies)

        await wait_for(all_done, timeout_s=60, interval_s=0.5, what="every job done")


async def test_a_producer_writes_on_a_cluster(cluster: LocalCluster) -> None:
    """The producer's lease, script and SPUBLISH land on the job's shard; a gateway on the
    cluster delivers them."""
    settings = make_settings(cluster.url, redis_cluster=True)
    async with (
        AsyncProducer(settings=settings) as producer,
        stack_on(cluster, concurrency=1) as (client, [base]),
    ):
        job, token = await producer.create(kind="report")
        async with connect(base) as ws:
            await ws.watch(job, token)
            async with producer.open(job) as j:
                for i in range(1, 101):
                    await j.emit({"i": i})
                await j.done({"count": 100})
            frames = (await ws.events_until_terminal({job}))[job]
        assert_exact(frames[1:], job, 100)
        assert await client.hget(Keys().meta(job), "status") == b"done"


async def test_xread_on_a_cluster_keeps_to_its_connection_cap(cluster: LocalCluster) -> None:
    """XREAD_MAX_CONNECTIONS holds on a cluster too (each loop has its own connection to its
    job's primary): the loop past it tells its client `capacity`, retries, and every event
    still arrives exactly once."""
    async with stack_on(
        cluster, concurrency=4, delivery_mode="xread", xread_max_connections=2, xread_block_ms=200
    ) as (_, [base]):
        long_jobs = [await submit(base, "count", {"n": 10, "interval_ms": 100}) for _ in range(2)]
        third, third_token = await submit(base, "count", {"n": 3, "interval_ms": 600})
        async with connect(base) as ws:
            for job, token in [*long_jobs, (third, third_token)]:
                await ws.watch(job, token)
            jobs = {job for job, _ in long_jobs} | {third}
            got = await ws.events_until_terminal(jobs, timeout_s=30)
    errors = [f for frames in got.values() for f in frames if f["type"] == "error"]
    assert errors and {e["code"] for e in errors} == {"capacity"}, errors
    for job, _ in long_jobs:
        assert_exact([f for f in got[job] if f["type"] == "event"], job, 10)
    assert_exact([f for f in got[third] if f["type"] == "event"], third, 3)
