"""An in-memory live source: frames are handed over by whoever holds it (tests, embedders).

It reaches no server, so the hub's rules can be driven step by step: `push` is a frame
arriving live, `lose` is a connection that dropped some. What it follows is recorded, so a
test can see the hub follow a job on its first watch and let go on its last.
"""

from __future__ import annotations

from service.delivery.base import LiveSink


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

    def push(self, job: str, frame: bytes) -> None:
        """A live frame, delivered only while the job is followed (as a subscription would)."""
        if self._sink is not None and job in self.following:
            self._sink.publish(job, frame)

    def lose(self, jobs: list[str] | None = None) -> None:
        """The source may have missed frames of `jobs` (None: all), as after a reconnect."""
        if self._sink is not None:
            self._sink.missed(jobs, "reconnect")
