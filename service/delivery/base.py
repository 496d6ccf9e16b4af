"""The seam between Redis and the gateway.

A session never touches Redis: it asks a `Delivery` to watch a job on its behalf, and the
delivery hands it event frames through the `Watcher` interface. `pubsub` and `xread` are two
implementations of `Delivery`, chosen in one place (`service.delivery.create_delivery`).

Guarantees every implementation gives, per watch:

- Exactly once, in order, no gaps: the watcher receives the job's events with seq
  `after + 1, after + 2, ...` each once, whatever happens to Redis connections in between,
  as long as the events are within the result TTL.
- A terminal event (`done`, `failed`) is the last thing delivered; the watch then ends by
  itself (`Watcher.watch_ended`). A watch that starts after the terminal event gets
  `unwatched` at once (`Watcher.watch_finished`): nothing will ever follow.
- When the position cannot be served in full (the job expired, or its stream ends before
  `after`), the watcher gets `gone` and the watch ends; never a partial replay.
- Redis trouble reaches the watcher as one `busy`/`capacity`/`unavailable` error per outage;
  the watch stays in place and resumes by itself when Redis answers again.
- Flow control: a watcher is only ever offered what it has room for. A watcher that refuses a
  frame (its client reads slowly) is not sent live frames any more; once it reports
  `drained`, the watch is served from the job's stream from where it stopped, at the
  watcher's pace, and one slow watcher never holds back another watcher of the same job.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from service.model import ErrorCode


class Watcher(Hashable, Protocol):
    """What a delivery needs of a client session. Every method must return at once."""

    def deliver(self, frame: bytes) -> bool:
        """Queue one event frame for sending if there is room; never blocks the caller.

        False: the frame was not queued (the client is behind); the watcher owes the
        delivery a `drained` call once it has room again.
        """

    def watch_failed(self, job: str, code: ErrorCode, message: str) -> None:
        """Tell the client about a problem with this watch."""

    def watch_ended(self, job: str) -> None:
        """The watch is over (terminal event delivered, or `gone`); forget the job."""

    def watch_finished(self, job: str) -> None:
        """The watch began after the job's terminal event: tell the client nothing follows."""

    def room(self) -> int:
        """Bytes of frames the watcher can take now (a catch-up reads no more for it).

        0: it is full, and owes the delivery a `drained` call once it has room again.
        """


class Delivery(Protocol):
    """Routes a job's events from Redis to the watchers of that job in this process."""

    mode: str

    async def start(self) -> None:
        """Connect and begin delivering; returns once started (Redis may still be down)."""

    async def stop(self) -> None:
        """Release every Redis connection and background task."""

    def ready(self) -> bool:
        """True while events can be delivered live."""

    def watch(self, job: str, watcher: Watcher, after_seq: int) -> None:
        """Start delivering `job`'s events after `after_seq` to `watcher`."""

    def unwatch(self, job: str, watcher: Watcher) -> None:
        """Stop delivering `job` to `watcher` (no-op when it does not watch it)."""

    def drained(self, watcher: Watcher) -> None:
        """The watcher has room again: watches paused for it are served from the stream."""

    @property
    def watch_count(self) -> int:
        """Active watches in this process."""

    @property
    def paused_count(self) -> int:
        """Watches waiting for their client to drain (flow control)."""
