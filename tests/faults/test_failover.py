"""Failover: the gateway finds itself talking to a different Redis server whose history of a
job differs from what it already delivered (a replica that lagged, then the job re-ran).

The two servers sit behind one address (a TCP proxy that is switched from one to the other),
so nothing but the data and the servers' run ids tells them apart. A watch whose delivered
events the new server no longer holds ends with `gone`; a watch whose history is intact goes
on, exactly once, as after any reconnect.
"""

from __future__ import annotations

import httpx
import pytest
import redis.asyncio as redis

from service import tokens
from service.codec import event_frame
from service.config import DELIVERY_MODES
from service.keys import Keys
from service.migrate import migrate
from service.model import EventKind, new_job_id
from service.streams import store_event
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway
from tests.redis_servers import RedisServer
from tests.tcp_proxy import tcp_proxy
from tests.test_metrics import samples
from tests.ws_client import connect

KEYS = Keys()
pytestmark = pytest.mark.slow


def frame(job: str, seq: int, event: str, data: str) -> bytes:
    return event_frame(seq, job, EventKind(event), 1_700_000_000_000 + seq, data.encode())


async def store(client: redis.Redis, job: str, frames: list[bytes], status: str) -> None:
    pipe = client.pipeline(transaction=False)
    for seq, f in enumerate(frames, 1):
        store_event(pipe, KEYS, job, seq, f)
    pipe.hset(KEYS.meta(job), mapping={"status": status, "kind": "count"})
    await pipe.execute()


@pytest.mark.parametrize("mode", DELIVERY_MODES)
async def test_a_rewritten_history_ends_the_watch_with_gone(
    tmp_path_factory: pytest.TempPathFactory, mode: str
) -> None:
    old = RedisServer(tmp_path_factory.mktemp("old"))
    new = RedisServer(tmp_path_factory.mktemp("new"))
    old.start()
    new.start()
    old_client, new_client = old.client(), new.client()
    for client in (old_client, new_client):
        await migrate(client, KEYS, report=lambda _: None)
    rewritten, intact = new_job_id(), new_job_id()
    a = [frame(rewritten, seq, "data", '{"v":"a"}') for seq in (1, 2, 3)]
    b = [frame(rewritten, seq, "data", '{"v":"b"}') for seq in (3, 4)]
    kept = [frame(intact, seq, "data", "{}") for seq in (1, 2, 3)]
    done = frame(intact, 4, "done", '{"count":3}')
    # The old server delivered three events of each job; the new one lost the third of
    # `rewritten` and has a different third and a fourth in their place.
    await store(old_client, rewritten, a, "running")
    await store(old_client, intact, kept, "running")
    await store(new_client, rewritten, [*a[:2], *b], "running")
    await store(new_client, intact, [*kept, done], "done")
    try:
        async with tcp_proxy(old.port) as proxy:
            settings = make_settings(proxy.url, delivery_mode=mode, xread_block_ms=1000)
            async with running_gateway(settings) as base, connect(base) as ws:
                for job in (rewritten, intact):
                    await ws.watch(job, tokens.sign(job, settings.secret_key))
                seen = {rewritten: 0, intact: 0}
                while min(seen.values()) < 3:
                    got = await ws.recv()
                    if got["type"] == "event":
                        assert got["seq"] == seen[got["job"]] + 1
                        seen[got["job"]] = got["seq"]
                assert proxy.switch(new.port) >= 2
                after = await ws.events_until_terminal({rewritten, intact}, timeout_s=30)
                async with httpx.AsyncClient(base_url=base) as http:
                    found = samples((await http.get("/metrics")).text)
    finally:
        await old_client.aclose()
        await new_client.aclose()
        old.stop()
        new.stop()
    outage = ("busy", "unavailable")
    ended = [f for f in after[rewritten] if f["type"] != "error" or f["code"] not in outage]
    assert [(f["type"], f.get("code")) for f in ended] == [("error", "gone")], after[rewritten]
    assert "rewritten" in ended[0]["message"]
    events = [f for f in after[intact] if f["type"] == "event"]
    assert [(f["seq"], f["event"]) for f in events] == [(4, "done")], after[intact]
    # The change was noticed as such, not as a mere reconnect (the check itself shows above:
    # `gone` for the rewritten job; its catch-up is counted under the cause that came first).
    assert found[("resultcast_redis_server_changes_total", (("mode", mode),))] >= 1


async def publish(client: redis.Redis, job: str, seq: int, event: str, data: str) -> None:
    """What a worker's emit does: the event stored, then its frame published."""
    f = frame(job, seq, event, data)
    pipe = client.pipeline(transaction=False)
    store_event(pipe, KEYS, job, seq, f)
    pipe.hset(KEYS.meta(job), "status", "running")
    pipe.publish(KEYS.channel(job), f)
    await pipe.execute()


async def replid(client: redis.Redis) -> str:
    return str((await client.info("replication"))["master_replid"])


@pytest.mark.parametrize("mode", DELIVERY_MODES)
async def test_a_promoted_replica_is_noticed_and_watches_go_on(
    tmp_path_factory: pytest.TempPathFactory, mode: str
) -> None:
    """A gateway reads from a replica; the primary goes away and the replica is promoted
    (`REPLICAOF NO ONE`, then `CLIENT KILL` of its clients, as Sentinel does). Same server,
    same run id: only `master_replid` changes, and the gateway must take it as a new server,
    check each watch against it, and go on with every event once."""
    primary = RedisServer(tmp_path_factory.mktemp("primary"))
    primary.start()
    replica = RedisServer(
        tmp_path_factory.mktemp("replica"), args=("--replicaof", "127.0.0.1", str(primary.port))
    )
    replica.start()
    writer, reader = primary.client(), replica.client()
    try:
        await migrate(writer, KEYS, report=lambda _: None)
        job = new_job_id()
        await store(writer, job, [], "running")
        await wait_for(lambda: _synced(reader, job), what="the replica to hold the primary's data")
        settings = make_settings(replica.url, delivery_mode=mode, xread_block_ms=500)
        async with running_gateway(settings) as base, connect(base) as ws:
            await ws.watch(job, tokens.sign(job, settings.secret_key))
            for seq in range(1, 6):
                await publish(writer, job, seq, "data", "{}")
            seen = [await ws.recv() for _ in range(6)]  # `watching`, then 5 events
            assert [f.get("seq") for f in seen[1:]] == [1, 2, 3, 4, 5]
            assert await writer.execute_command("WAIT", 1, 5000) == 1
            before = await replid(reader)
            primary.stop()
            await reader.execute_command("REPLICAOF", "NO", "ONE")
            assert await replid(reader) != before
            await reader.client_kill_filter(_type="normal", skipme=True)
            await reader.client_kill_filter(_type="pubsub")
            for seq in range(6, 10):
                await publish(reader, job, seq, "data", "{}")
            await publish(reader, job, 10, "done", '{"count":9}')
            await reader.hset(KEYS.meta(job), "status", "done")
            after = await ws.events_until_terminal({job}, timeout_s=30)
            async with httpx.AsyncClient(base_url=base) as http:
                found = samples((await http.get("/metrics")).text)
    finally:
        await writer.aclose()
        await reader.aclose()
        primary.stop()
        replica.stop()
    outage = ("busy", "unavailable")
    frames = [f for f in after[job] if f["type"] != "error" or f["code"] not in outage]
    assert [(f["type"], f.get("seq")) for f in frames] == [("event", s) for s in range(6, 11)]
    assert found[("resultcast_redis_server_changes_total", (("mode", mode),))] >= 1


async def _synced(client: redis.Redis, job: str) -> bool:
    return bool(await client.exists(KEYS.meta(job)))
