"""In memory: a live source and stored streams that reach no server (tests, embedders).

The hub's rules can be driven step by step with them, in milliseconds: `MemorySource.push`
is a frame arriving live, `lose` a connection that dropped some; `MemoryStreams` holds what
a job's stream would, and pages it by the same rules as the Redis reader. What the source
follows is recorded, so a test sees the hub follow a job on its first watch and let go on its
last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from service.delivery.base import CatchUpCause, LiveSink
from service.streams import Page, PageRequest


class MemorySource:
    mode = "memory"

    def __init__(self) -> None:
        self._sink: LiveSink | None = None
        self.following: dict[str, int] = {}  # job -> the position it was first watched from
        self.up = True

    async def start(self, sink: LiveSink) -> None:
        self._sink = sink

    async def stop(self) -> None:
        self._sink = None

    def ready(self) -> bool:
        return self.up and self._sink is not None

    def follow(self, job: str, after_seq: int) -> None:
        self.following[job] = after_seq

    def unfollow(self, job: str) -> None:
        self.following.pop(job, None)

    def describe(self) -> dict[str, Any]:
        return {"source": "memory", "up": self.up, "following": len(self.following)}

    def push(self, job: str, frame: bytes) -> None:
        """A live frame, delivered only while the job is followed (as a subscription would)."""
        if self._sink is not None and job in self.following:
            self._sink.publish(job, frame)

    def lose(self, jobs: list[str] | None = None) -> None:
        """The source may have missed frames of `jobs` (None: all), as after a reconnect."""
        if self._sink is not None:
            self._sink.missed(jobs, CatchUpCause.RECONNECT)


class MemoryStreams:
    """Jobs' stored events in memory: a `PageReader` with the Redis reader's page rules."""

    def __init__(self) -> None:
        self.frames: dict[str, list[bytes]] = {}
        self.finished: set[str] = set()
        self.reads = 0  # pages served, so a test can see what catch-up cost

    def append(self, job: str, frame: bytes, *, terminal: bool = False) -> None:
        self.frames.setdefault(job, []).append(frame)
        if terminal:
            self.finished.add(job)

    def expire(self, job: str) -> None:
        self.frames.pop(job, None)
        self.finished.discard(job)

    async def pages(
        self,
        requests: list[PageRequest],
        count: int,
        checks: Mapping[str, list[int]] | None = None,
    ) -> list[Page]:
        await asyncio.sleep(0)  # a read is a round trip: other things may happen meanwhile
        pages = []
        for request in requests:
            self.reads += 1
            stored = self.frames.get(request.job)
            if stored is None:
                pages.append(Page(request.job, exists=False, last_seq=0, frames=[]))
                continue
            frames: list[bytes] = []
            size = 0
            more = False
            for frame in stored[request.after_seq :]:
                if len(frames) == count or (frames and size + len(frame) > request.max_bytes):
                    more = True
                    break
                frames.append(frame)
                size += len(frame)
            seqs = (checks or {}).get(request.job, [])
            pages.append(
                Page(
                    request.job,
                    exists=True,
                    last_seq=len(stored),
                    frames=frames,
                    finished=request.job in self.finished,
                    more=more,
                    stored={s: stored[s - 1] if 0 < s <= len(stored) else None for s in seqs},
                )
            )
        return pages
