"""The hub's rules, step by step, on the in-memory source and streams: milliseconds each.

What arrives live is `source.push`; what the stream holds is `streams`. Each test drives one
rule: duplicates dropped, a gap caught up, a read that missed something read again, pause and
resume, failover verification, the replay cap, a watch that starts after the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from service.codec import event_frame
from service.delivery.base import CatchUpCause
from service.delivery.hub import Hub
from service.delivery.memory import MemorySource, MemoryStreams
from service.model import ErrorCode, EventKind
from service.server_identity import ServerIdentity
from service.stats import GatewayStats
from tests.conftest import wait_for
from tests.delivery.clients import Client, Watcher


@dataclass
class Parts:
    hub: Hub
    source: MemorySource
    streams: MemoryStreams
    server: ServerIdentity

    def write(
        self, job: str, first: int, last: int, *, live: bool = True, end: bool = False
    ) -> None:
        """Events first..last stored, and (live) published; `end`: the last one is `done`."""
        for seq in range(first, last + 1):
            terminal = end and seq == last
            kind = EventKind.DONE if terminal else EventKind.DATA
            frame = event_frame(seq, job, kind, 1, b'{"pad":"' + b"x" * 100 + b'"}')
            self.streams.append(job, frame, terminal=terminal)
            if live:
                self.source.push(job, frame)

    def watcher(self, window: int = 1000, limit_bytes: int = 1 << 20) -> tuple[Watcher, Client]:
        client = Client(window)
        return Watcher(self.hub, client, limit_bytes), client


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    source, streams, server = MemorySource(), MemoryStreams(), ServerIdentity()
    server.observe(b"first-run-id", b"first-replid")
    hub = Hub(streams, GatewayStats(), source, page_size=50, max_replay_events=500, server=server)
    await hub.start()
    yield Parts(hub, source, streams, server)
    await hub.stop()


async def test_the_hub_follows_a_job_while_it_has_watchers(parts: Parts) -> None:
    a, _ = parts.watcher()
    b, _ = parts.watcher()
    parts.hub.watch("j", a, 0)
    parts.hub.watch("j", b, 3)
    assert parts.source.following == {"j": 0}
    parts.hub.unwatch("j", a)
    assert parts.source.following == {"j": 0}
    parts.hub.unwatch("j", b)
    assert parts.source.following == {}
    assert parts.hub.ready()


async def test_duplicates_are_dropped_and_a_gap_is_read_from_the_stream(parts: Parts) -> None:
    watcher, client = parts.watcher()
    parts.hub.watch("j", watcher, 0)
    parts.write("j", 1, 3)
    await client.read(3)
    frames = parts.streams.frames["j"]
    parts.source.push("j", frames[1])  # a duplicate
    parts.write("j", 4, 6, live=False)  # missed live...
    parts.write("j", 7, 7)  # ... noticed by the next one's seq
    await client.read(4)
    assert client.seqs("j") == list(range(1, 8))
    assert parts.hub._stats.catch_ups[CatchUpCause.GAP] >= 1


async def test_a_lost_connection_is_caught_up(parts: Parts) -> None:
    watcher, client = parts.watcher()
    parts.hub.watch("j", watcher, 0)
    parts.write("j", 1, 2)
    await client.read(2)
    parts.write("j", 3, 5, live=False)
    parts.source.lose()
    await client.read(3)
    assert client.seqs("j") == [1, 2, 3, 4, 5]


async def test_frames_published_while_a_read_is_out_are_read_again(parts: Parts) -> None:
    watcher, client = parts.watcher()
    parts.write("j", 1, 10, live=False)
    parts.hub.watch("j", watcher, 0)  # the read is out until the loop turns ...
    parts.write("j", 11, 12)  # ... and these arrive live meanwhile, too early to deliver
    await client.read(12)
    assert client.seqs("j") == list(range(1, 13))


async def test_a_paused_watch_resumes_from_the_stream(parts: Parts) -> None:
    watcher, client = parts.watcher(window=1, limit_bytes=800)
    parts.hub.watch("j", watcher, 0)
    parts.write("j", 1, 40, end=True)
    await wait_for(lambda: parts.hub.paused_count == 1, what="the watch to pause")
    await client.read(40)
    assert client.seqs("j") == list(range(1, 41))
    assert watcher.ended == ["j"] and parts.hub.paused_count == 0


async def test_after_a_failover_a_rewritten_history_is_gone_and_an_intact_one_goes_on(
    parts: Parts,
) -> None:
    kept, kept_client = parts.watcher()
    lost, lost_client = parts.watcher()
    parts.hub.watch("kept", kept, 0)
    parts.hub.watch("lost", lost, 0)
    parts.write("kept", 1, 3)
    parts.write("lost", 1, 3)
    await kept_client.read(3)
    await lost_client.read(3)
    # The new server holds a different third event of "lost".
    parts.streams.frames["lost"][2] = event_frame(3, "lost", EventKind.DATA, 2, b"{}")
    parts.server.observe(b"another-run-id", b"another-replid")
    parts.write("kept", 4, 4)
    parts.write("lost", 4, 4)
    await kept_client.read(1)
    await wait_for(lambda: lost.errors, what="the rewritten watch to end")
    assert kept_client.seqs("kept") == [1, 2, 3, 4]
    assert lost.errors == [("lost", ErrorCode.GONE)] and lost.ended == ["lost"]
    assert lost_client.seqs("lost") == [1, 2, 3]


async def test_a_position_too_far_back_is_refused_before_anything_is_sent(parts: Parts) -> None:
    parts.write("j", 1, 600, end=True, live=False)
    far, far_client = parts.watcher()
    near, near_client = parts.watcher()
    parts.hub.watch("j", far, 0)
    parts.hub.watch("j", near, 200)
    await near_client.read(400)
    assert near_client.seqs("j") == list(range(201, 601))
    assert far.errors == [("j", ErrorCode.GONE)] and far_client.seen == []


async def test_a_watch_after_the_end_is_told_nothing_follows(parts: Parts) -> None:
    parts.write("j", 1, 2, end=True, live=False)
    watcher, _ = parts.watcher()
    parts.hub.watch("j", watcher, 2)
    await wait_for(lambda: watcher.finished, what="the watch to end")
    assert watcher.finished == ["j"] and parts.hub.watch_count == 0


async def test_an_expired_job_is_gone(parts: Parts) -> None:
    watcher, _ = parts.watcher()
    parts.hub.watch("nothing", watcher, 0)
    await wait_for(lambda: watcher.errors, what="gone")
    assert watcher.errors == [("nothing", ErrorCode.GONE)]
