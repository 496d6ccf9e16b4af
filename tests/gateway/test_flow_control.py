"""Flow control for slow readers, end to end, in both delivery modes.

A client that reads more slowly than its job writes is served from the job's stream at its
own pace: never closed, every event once, in order. Only a client that accepts nothing for
SEND_STALL_TIMEOUT_S is closed (1013). One slow watcher never holds back another.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from service.config import DELIVERY_MODES
from tests.conftest import wait_for
from tests.processes import running_stack
from tests.test_metrics import samples
from tests.ws_client import Client, assert_exact, connect, submit

MODES = DELIVERY_MODES
KiB = 1024
# The gateway's kernel send buffer per connection: a client that stops reading holds up
# the gateway's sends after this much, so the tests need not push megabytes to show it.
SEND_BUFFER = 32 * KiB


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def slow_link_stack(
    tmp_path: Path, mode: str, queue_bytes: int, **overrides: Any
) -> contextlib.AbstractAsyncContextManager[str]:
    """A stack whose gateway queues `queue_bytes` per socket, behind a small kernel buffer."""
    return running_stack(
        tmp_path,
        delivery_mode=mode,
        socket_send_buffer_bytes=SEND_BUFFER,
        max_send_queue_bytes=queue_bytes,
        **overrides,
    )


async def metric(base: str, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(base_url=base) as http:
        found = samples((await http.get("/metrics")).text)
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_until_done(base: str, job: str, token: str) -> None:
    """Watch the job to its end on a client of its own."""
    async with connect(base) as ws:
        await ws.watch(job, token)
        got = await ws.events_until_terminal({job}, timeout_s=60)
    assert got[job][-1]["event"] == "done"


@pytest.mark.slow
async def test_a_slow_reader_gets_every_event_and_a_fast_one_is_not_held_back(
    tmp_path: Path, mode: str
) -> None:
    # 6 MB written as fast as the worker can; one client takes 1.5 MB/s through a 64 KiB
    # queue, so the gateway pauses it again and again and serves it from the stream.
    async with slow_link_stack(tmp_path, mode, 64 * KiB, send_stall_timeout_s=2.0) as base:
        job, token = await submit(base, "count", {"n": 3000, "size": 2000})
        async with connect(base, small_buffers=True) as slow, connect(base) as fast:
            await slow.watch(job, token)
            await fast.watch(job, token)
            slow_got, fast_got = await asyncio.gather(
                slow.read_throttled({job}, bytes_per_s=1_500_000, timeout_s=60),
                fast.events_until_terminal({job}, timeout_s=60),
            )
            assert_exact(fast_got[job][1:], job, 3000)
            assert_exact(slow_got[job][1:], job, 3000)
            for client in (slow, fast):  # neither was closed: both still answer
                await client.send({"op": "ping"})
                assert await client.recv() == {"type": "pong"}
        labels = {"mode": mode}
        assert await metric(base, "resultcast_flow_control_pauses_total", **labels) > 0
        assert await metric(base, "resultcast_slow_client_closes_total", **labels) == 0
        drained = await metric(base, "resultcast_catch_ups_total", cause="drained", **labels)
        assert drained > 0


@pytest.mark.slow
async def test_a_client_that_accepts_nothing_is_closed_with_1013_and_others_go_on(
    tmp_path: Path, mode: str
) -> None:
    async with slow_link_stack(tmp_path, mode, 64 * KiB, send_stall_timeout_s=1.0) as base:
        job, token = await submit(base, "count", {"n": 2000, "size": 2000, "interval_ms": 1})
        async with connect(base, small_buffers=True) as stuck, connect(base) as fast:
            await stuck.watch(job, token)
            await fast.watch(job, token)
            got = await fast.events_until_terminal({job}, timeout_s=60)
            assert_exact(got[job][1:], job, 2000)
            await wait_for(
                lambda: metric(base, "resultcast_slow_client_closes_total", mode=mode),
                what="the stuck client to be closed",
            )
            # It reads again: what was already on its way, then the close frame.
            received: list[dict[str, Any]] = []
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    received.append(await stuck.recv())
            assert stuck.ws.close_code == 1013
            seqs = [f["seq"] for f in received if f.get("type") == "event"]
            assert seqs == list(range(1, len(seqs) + 1))  # a prefix, in order, to resume from
            assert len(seqs) < 2001
            # ... and resumes where it stopped, on a new connection, to the end.
        async with connect(base) as again:
            await again.watch(job, token, after=f"{seqs[-1]}-0" if seqs else None)
            rest = await again.events_until_terminal({job})
            assert_exact(rest[job][1:], job, 2000, first_seq=len(seqs) + 1)


@pytest.mark.slow
@pytest.mark.parametrize("size", [10_000, 20_000])
async def test_a_finished_job_of_large_events_replays_in_full(
    tmp_path: Path, mode: str, size: int
) -> None:
    # The contract's default queue (4 MiB) and a small one (less than two events).
    async with running_stack(tmp_path, delivery_mode=mode) as base:
        job, token = await submit(base, "count", {"n": 1000, "size": size})
        await wait_until_done(base, job, token)
        async with connect(base) as ws:
            await ws.watch(job, token)
            got = await ws.events_until_terminal({job})
            assert_exact(got[job][1:], job, 1000)
            assert all(len(e["data"]["pad"]) == size for e in got[job][1:-1])
    async with running_stack(
        tmp_path / "small", delivery_mode=mode, max_send_queue_bytes=size + size // 2
    ) as base:
        job, token = await submit(base, "count", {"n": 300, "size": size})
        await wait_until_done(base, job, token)
        async with connect(base) as ws:
            await ws.watch(job, token)
            got = await ws.events_until_terminal({job})
            assert_exact(got[job][1:], job, 300)


@pytest.mark.slow
async def test_a_slow_reader_of_several_jobs_gets_each_in_full(tmp_path: Path, mode: str) -> None:
    async with slow_link_stack(tmp_path, mode, 32 * KiB, concurrency=5) as base:
        jobs = [
            await submit(base, "count", {"n": 400, "size": 1500, "interval_ms": 1})
            for _ in range(5)
        ]
        async with connect(base, small_buffers=True) as slow:
            for job, token in jobs:
                await slow.watch(job, token)
            got = await slow.read_throttled({j for j, _ in jobs}, bytes_per_s=1_000_000)
        for job, _ in jobs:
            assert_exact(got[job][1:], job, 400)


@pytest.mark.slow
async def test_a_reader_that_lags_while_its_job_finishes_gets_the_end(
    tmp_path: Path, mode: str
) -> None:
    async with slow_link_stack(tmp_path, mode, 32 * KiB, send_stall_timeout_s=30.0) as base:
        job, token = await submit(base, "count", {"n": 1500, "size": 2000})
        async with connect(base, small_buffers=True) as lagging:
            await lagging.watch(job, token)
            assert (await lagging.recv())["type"] == "watching"
            # It reads nothing until the job is done and the gateway has paused it.
            await wait_until_done(base, job, token)
            await wait_for(
                lambda: metric(base, "resultcast_watches_paused", mode=mode),
                what="the watch to be paused",
            )
            got = await lagging.events_until_terminal({job})
            assert_exact(got[job], job, 1500)
            await lagging.send({"op": "unwatch", "job": job})  # the watch ended by itself
            assert (await lagging.recv())["code"] == "not_found"
        assert await metric(base, "resultcast_watches_paused", mode=mode) == 0


@pytest.mark.slow
async def test_many_non_reading_sockets_do_not_hold_back_a_reader_of_the_same_job(
    tmp_path: Path, mode: str
) -> None:
    async with slow_link_stack(tmp_path, mode, 16 * KiB, send_stall_timeout_s=60.0) as base:
        job, token = await submit(base, "count", {"n": 2000, "size": 500, "interval_ms": 1})
        async with contextlib.AsyncExitStack() as stack:
            stuck: list[Client] = []
            for _ in range(100):
                client = await stack.enter_async_context(connect(base, small_buffers=True))
                await client.watch(job, token)
                stuck.append(client)
            async with connect(base) as fast:
                await fast.watch(job, token)
                got = await fast.events_until_terminal({job}, timeout_s=60)
                assert_exact(got[job][1:], job, 2000)
            paused = await metric(base, "resultcast_watches_paused", mode=mode)
            assert paused == 100
            for client in stuck:
                client.abort()

        # Gone clients leave nothing behind.
        async def all_closed() -> bool:
            return await metric(base, "resultcast_sockets_open", mode=mode) == 0

        await wait_for(all_closed, what="the stuck sockets to be closed")
        assert await metric(base, "resultcast_watches_paused", mode=mode) == 0
