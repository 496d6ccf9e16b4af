"""Starting from a node that does not answer: `REDIS_CLUSTER_NODES` names more seeds, and
every process (migrate, gateway, worker, producer) finds the cluster through them."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from service.cluster_client import stream_read_keys
from service.config import Settings
from service.processes import SERVICE, free_port
from service.producer import AsyncProducer
from tests.conftest import ROOT, make_settings, service_env
from tests.processes import running_gateway, running_worker
from tests.redis_cluster import LocalCluster
from tests.ws_client import assert_exact, connect, submit

pytestmark = [
    pytest.mark.slow,
    # See test_contract_on_cluster.py: redis-py's cluster client leaks a startup connection.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


def _seeded(cluster: LocalCluster) -> dict[str, str]:
    """REDIS_URL names a port nothing listens on; the seeds name two live nodes."""
    seeds = ",".join(f"127.0.0.1:{node.port}" for node in cluster.nodes[1:3])
    url = f"redis://127.0.0.1:{free_port()}/0"
    return service_env(url, REDIS_CLUSTER="true", REDIS_CLUSTER_NODES=seeds)


def _migrate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVICE, "migrate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_migrate_finds_the_cluster_through_the_seeds(cluster: LocalCluster) -> None:
    env = _seeded(cluster)
    refused = _migrate({k: v for k, v in env.items() if k != "REDIS_CLUSTER_NODES"})
    assert refused.returncode != 0  # the REDIS_URL node alone does not answer
    done = _migrate(env)
    assert done.returncode == 0, done.stderr


async def test_gateway_worker_and_producer_start_from_the_seeds(cluster: LocalCluster) -> None:
    env = _seeded(cluster)
    migrated = await asyncio.to_thread(_migrate, env)
    assert migrated.returncode == 0, migrated.stderr
    seeds = Settings.from_env(env).redis_cluster_nodes
    settings = make_settings(env["REDIS_URL"], redis_cluster=True, redis_cluster_nodes=seeds)
    async with running_worker(settings), running_gateway(settings) as base:
        job, token = await submit(base, "count", {"n": 5})
        async with connect(base) as ws:
            await ws.watch(job, token)
            got = await ws.events_until_terminal({job}, timeout_s=30)
        assert_exact([f for f in got[job] if f["type"] == "event"], job, 5)
        async with AsyncProducer(settings=settings) as producer:
            made, made_token = await producer.create()
            async with producer.open(made) as emitting:
                await emitting.emit({"pct": 50})
                await emitting.done({"ok": True})
        async with connect(base) as ws:
            await ws.watch(made, made_token)
            events = (await ws.events_until_terminal({made}, timeout_s=30))[made]
        assert [e["event"] for e in events if e["type"] == "event"] == ["data", "done"], events


def test_the_keys_of_stream_reads_are_read_without_asking_a_node() -> None:
    args = ("GROUP", "g", "c", "COUNT", 5, "BLOCK", 100, "STREAMS", "s1", "s2", ">", ">")
    assert stream_read_keys("XREADGROUP", args) == ["s1", "s2"]
    assert stream_read_keys("xread", ("COUNT", 1, b"streams", b"k", b"0-0")) == [b"k"]
    assert stream_read_keys("XRANGE", ("k", "-", "+")) is None
