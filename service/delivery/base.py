"""The seams of delivery: between the gateway and the hub, and between the hub and Redis.

A session never touches Redis: it asks the `Delivery` (the hub, `service.delivery.hub`) to
watch a job on its behalf, and the hub hands it event frames through the `Watcher`
interface. Where live frames come from is a `LiveSource`: `pubsub` (one pattern subscription
per process), `xread` (the old design: a blocking read per job) or `memory` (tests). A source
only says "here is a frame for job J" and "I may have missed something for these jobs"; the
hub owns watches, catch-up from the stream, flow control and failover checks, once, for every
source. The mode is chosen in one place (`service.delivery.create_delivery`).

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

from collections.abc import Hashable, Iterable
from enum import StrEnum
from typing import Any, Protocol

from service.model import ErrorCode, ServiceError


class CatchUpCause(StrEnum):
    """Why a watched job is read from its stream: the `cause` label of
    `resultcast_catch_ups_total`, which exports every member (a new cause is one line here)."""

    WATCH = "watch"  # a new watch, from the start
    RESUME = "resume"  # a new watch with `after`
    GAP = "gap"  # a live frame whose seq is past the next one expected
    RECONNECT = "reconnect"  # the source's connection came back: frames meanwhile are gone
    SUBSCRIBE = "subscribe"  # a subscription confirmed for the first time
    FAILOVER = "failover"  # a different server (run id or replication id) behind a connection
    DRAINED = "drained"  # a paused watch whose client has room again
    RESTART = "restart"  # the live source was restarted by its supervisor
    LARGE = "large"  # an event over 64 KiB, announced by position only


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

    @property
    def catch_up_backlog(self) -> int:
        """Jobs waiting for, or in, a catch-up read."""

    def snapshot(self, busiest: int) -> dict[str, Any]:
        """What it holds now, for `/admin/stats`, without a Redis command: watches, the
        `busiest` jobs by watchers, paused watches, the catch-up backlog, the live source."""


class LiveSink(Protocol):
    """What a live source reports to (the hub). Every method returns at once."""

    def publish(self, job: str, frame: bytes) -> None:
        """A live event frame for `job` (any order, duplicates allowed: the hub sorts it out)."""

    def missed(self, jobs: Iterable[str] | None, cause: CatchUpCause) -> None:
        """Frames for `jobs` (None: every job) may have been lost: catch them up from the stream."""

    def report(self, jobs: list[str] | None, error: ServiceError) -> None:
        """Redis trouble for these jobs' live frames (None: every job; one error per watch
        and outage)."""

    def server_changed(self, jobs: list[str]) -> None:
        """These jobs now live on a server that may hold a different history than the one
        already delivered (a promoted replica, a restarted node): check, then catch up."""


class LiveSource(Protocol):
    """Where live frames come from.

    Guarantees a source gives the hub: every frame it sees for a followed job is passed to
    `publish`; whenever it may not have seen some (a connection lost or replaced, a restart of
    its own task, a topology change), it calls `missed` for the jobs concerned before passing
    newer frames. It never blocks on a client, and no error of its own escapes silently: its
    tasks are supervised and restarted, and `ready` is False while one is down.
    """

    mode: str

    async def start(self, sink: LiveSink) -> None:
        """Begin delivering to `sink`; returns once started (Redis may still be down)."""

    async def stop(self) -> None:
        """Release every connection and task."""

    def ready(self) -> bool:
        """True while live frames can arrive."""

    def follow(self, job: str, after_seq: int) -> None:
        """A first local watcher arrived for `job` (at `after_seq`): deliver its frames."""

    def unfollow(self, job: str) -> None:
        """The last local watcher of `job` left."""

    def describe(self) -> dict[str, Any]:
        """Its state for `/admin/stats` (connections, what it follows), without a command."""
