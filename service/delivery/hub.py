"""The hub: which local watchers watch which job, and catch-up from the stream.

Live frames come in through `publish` (from the subscriber, or from an XREAD loop); stored
frames come in through catch-up, which reads the job's stream after the lowest position any
of its watchers has. Both paths apply one rule per watch, so they can interleave freely:

    a frame with seq == watch.last_seq + 1 is delivered; lower is a duplicate and dropped;
    higher means the watch missed something, and the job is queued for catch-up.

Catch-up is done once per job for all its local watchers, many jobs per pipelined round trip,
by one task. A job whose catch-up is under way when something new is missed is marked dirty
and read again right after, so nothing falls between a read and a notification. A job whose
watcher has a large backlog is paused until that watcher drains, so a long replay never
floods a slow client.

A different Redis server (a failover, a restart, a full resync: its run id or replication id
changed, see `ServerIdentity`) may hold a different history than the one already delivered.
From the moment any connection sees one, every watched job is unverified: live frames for it
are held back, and its next catch-up also reads the stored entry at each watch's position and
compares it with the frame that watch last received. A watch whose history was cut or
rewritten ends with `gone`; the others go on as if nothing happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from service.codec import is_terminal_frame, seq_of_frame
from service.delivery.base import Watcher
from service.model import ErrorCode, ServiceError
from service.redis_client import backoff_s
from service.server_identity import ServerIdentity
from service.stats import GatewayStats
from service.streams import EventReader, Page

log = logging.getLogger(__name__)

JOBS_PER_ROUND_TRIP = 200
GONE_EXPIRED = "the job's results have expired (or the job never existed)"
GONE_REWOUND = (
    "the position asked for is past the job's last stored event "
    "(results were lost in a Redis failover); it cannot be served in full"
)
GONE_REWRITTEN = (
    "Redis failed over and no longer holds the events already delivered for this job "
    "(its history was rewritten); it cannot be served in full"
)


def gone_too_far(behind: int, limit: int) -> str:
    return (
        f"the position asked for is {behind} events behind the job's last event, more than "
        f"the {limit} a watch may replay (MAX_REPLAY_EVENTS); read the older events with "
        "GET /jobs/{job}?after=<id> and watch from a later id"
    )


@dataclass(eq=False, slots=True)
class Watch:
    watcher: Watcher
    last_seq: int
    error_sent: bool = False
    # The last frame delivered (a reference, not a copy), to compare with what a different
    # server stores at `last_seq`; None when the position came from the client.
    last_frame: bytes | None = None


class Hub:
    def __init__(
        self,
        reader: EventReader,
        stats: GatewayStats,
        *,
        page_size: int,
        high_water_bytes: int,
        max_replay_events: int = 0,
        on_first_watch: Callable[[str], None] | None = None,
        on_last_unwatch: Callable[[str], None] | None = None,
        server: ServerIdentity | None = None,
    ) -> None:
        self._reader = reader
        self._server = server or ServerIdentity()
        self._generation = self._server.generation
        self._unverified: set[str] = set()
        self._stats = stats
        self._page_size = page_size
        self._high_water = high_water_bytes
        self._max_replay = max_replay_events  # 0: no limit
        self._on_first_watch = on_first_watch
        self._on_last_unwatch = on_last_unwatch
        self.feeds: dict[str, dict[Watcher, Watch]] = {}
        self._pending: dict[str, None] = {}  # an ordered set of jobs to catch up
        self._inflight: set[str] = set()
        self._dirty: set[str] = set()
        self._paused: dict[Watcher, set[str]] = {}
        self._wake = asyncio.Event()
        self.watch_count = 0

    # -- watches -------------------------------------------------------------------------------

    def watch(self, job: str, watcher: Watcher, after_seq: int) -> None:
        watches = self.feeds.get(job)
        if watches is None:
            watches = self.feeds[job] = {}
            if self._on_first_watch is not None:
                self._on_first_watch(job)
        if watcher not in watches:
            self.watch_count += 1
        watches[watcher] = Watch(watcher, after_seq)
        self.request_catch_up(job, "resume" if after_seq else "watch")

    def unwatch(self, job: str, watcher: Watcher) -> None:
        watches = self.feeds.get(job)
        if watches is None or watches.pop(watcher, None) is None:
            return
        self.watch_count -= 1
        if not watches:
            del self.feeds[job]
            self._pending.pop(job, None)
            self._dirty.discard(job)
            self._unverified.discard(job)
            if self._on_last_unwatch is not None:
                self._on_last_unwatch(job)
        self._release(watcher)

    def _end(self, job: str, watch: Watch) -> None:
        self.unwatch(job, watch.watcher)
        watch.watcher.watch_ended(job)

    def _gone(self, job: str, watch: Watch, message: str) -> None:
        watch.watcher.watch_failed(job, ErrorCode.GONE, message)
        self._end(job, watch)

    # -- live frames ---------------------------------------------------------------------------

    def publish(self, job: str, frame: bytes) -> None:
        """A live frame for `job`: the subscriber's hot path, so it must stay cheap."""
        watches = self.feeds.get(job)
        if not watches:
            return
        if self._server.generation != self._generation:
            self._server_changed()
        if self._unverified and job in self._unverified:
            self.request_catch_up(job, None)  # held back until checked against the new server
        elif self._offer(job, watches, frame, seq_of_frame(frame)):
            self.request_catch_up(job, "gap")

    def _server_changed(self) -> None:
        self._generation = self._server.generation
        self._unverified.update(self.feeds)
        self._stats.failovers += 1
        log.warning("checking %d watched job(s) against the new Redis server", len(self.feeds))
        self.catch_up_all("failover")

    def _offer(self, job: str, watches: dict[Watcher, Watch], frame: bytes, seq: int) -> bool:
        """Apply the delivery rule to every watch; True if some watch is missing frames."""
        missed = False
        terminal: bool | None = None
        ended: list[Watch] = []
        for watch in watches.values():
            if seq == watch.last_seq + 1:
                watch.last_seq = seq
                watch.last_frame = frame
                watch.error_sent = False
                watch.watcher.deliver(frame)
                if terminal is None:
                    terminal = is_terminal_frame(frame)
                if terminal:
                    ended.append(watch)
            elif seq > watch.last_seq + 1:
                missed = True
        for watch in ended:
            self._end(job, watch)
        return missed

    # -- catch-up ------------------------------------------------------------------------------

    def request_catch_up(self, job: str, cause: str | None) -> None:
        """Queue `job` for catch-up; `cause` is counted, None for a continuation."""
        if job not in self.feeds:
            return
        if job in self._inflight:
            self._dirty.add(job)
            return
        if job in self._pending:
            return
        self._pending[job] = None
        if cause is not None:
            self._stats.catch_ups[cause] += 1
        self._wake.set()

    def catch_up_all(self, cause: str) -> None:
        for job in self.feeds:
            self.request_catch_up(job, cause)

    def drained(self, watcher: Watcher) -> None:
        self._release(watcher)

    def _release(self, watcher: Watcher) -> None:
        for job in self._paused.pop(watcher, ()):
            self.request_catch_up(job, None)

    def _blocking_watcher(self, job: str) -> Watcher | None:
        for watcher in self.feeds[job]:
            if watcher.backlog_bytes > self._high_water:
                return watcher
        return None

    async def run(self) -> None:
        """The catch-up task: runs until cancelled."""
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._next_batch()
                if not batch:
                    continue
                try:
                    await self._catch_up(batch)
                    failures = 0
                except ServiceError as e:
                    failures += 1
                    self.report(batch, e)
                    await asyncio.sleep(backoff_s(failures, base_s=0.1, cap_s=5.0))
                except Exception as e:
                    # Never let the catch-up task die: say so, back off, and go on.
                    failures += 1
                    log.exception("catch-up of %d job(s) failed unexpectedly", len(batch))
                    self.report(batch, ServiceError(f"internal error: {type(e).__name__}"))
                    await asyncio.sleep(backoff_s(failures, base_s=0.1, cap_s=5.0))

    def _next_batch(self) -> list[str]:
        batch = []
        for job in list(islice(self._pending, JOBS_PER_ROUND_TRIP)):
            del self._pending[job]
            if job not in self.feeds:
                continue
            blocking = self._blocking_watcher(job)
            if blocking is not None:
                self._paused.setdefault(blocking, set()).add(job)
                continue
            batch.append(job)
        return batch

    async def _catch_up(self, batch: list[str]) -> None:
        # Where each watch stood when the read was sent: live frames may move a watch on
        # while the read is in flight, and only a position it had before the read can be
        # compared with the job's last seq as read.
        if self._server.generation != self._generation:
            self._server_changed()
        sent = {
            job: {w: (watch.last_seq, watch.last_frame) for w, watch in self.feeds[job].items()}
            for job in batch
        }
        positions = [(job, min(seq for seq, _ in sent[job].values())) for job in batch]
        checks = {
            job: sorted({seq for seq, frame in sent[job].values() if frame is not None})
            for job in batch
            if job in self._unverified
        }
        generation = self._server.generation
        self._inflight.update(batch)
        try:
            pages = await self._reader.pages(positions, self._page_size, checks)
        except BaseException:
            self._requeue(batch)
            raise
        if self._server.generation != generation:
            # The server changed during this read: check everything against it first.
            self._requeue(batch)
            self._server_changed()
            return
        self._inflight.difference_update(batch)
        for page in pages:
            self._apply(page, sent[page.job])
            if page.job in checks:
                self._unverified.discard(page.job)

    def _requeue(self, batch: list[str]) -> None:
        self._inflight.difference_update(batch)
        for job in batch:  # try them again (after the back-off, if any)
            self._pending[job] = None

    def _apply(self, page: Page, sent: dict[Watcher, tuple[int, bytes | None]]) -> None:
        job = page.job
        watches = self.feeds.get(job)
        if not watches:
            self._dirty.discard(job)
            return
        for watcher, watch in list(watches.items()):
            seq, delivered = sent.get(watcher, (0, None))
            if not page.exists:
                self._gone(job, watch, GONE_EXPIRED)
            elif seq > page.last_seq:
                self._gone(job, watch, GONE_REWOUND)
            elif delivered is not None and seq in page.stored and page.stored[seq] != delivered:
                self._gone(job, watch, GONE_REWRITTEN)
            elif self._max_replay and page.last_seq - seq > self._max_replay:
                # Refused before anything is sent: never a partial replay.
                self._gone(job, watch, gone_too_far(page.last_seq - seq, self._max_replay))
        for frame in page.frames:
            watches = self.feeds.get(job)
            if not watches:
                break
            self._offer(job, watches, frame, seq_of_frame(frame))
        if page.finished and not page.frames:
            # Watched from after the terminal event: nothing will ever come; say so and end.
            for watcher, watch in list(self.feeds.get(job, {}).items()):
                if sent.get(watcher, (-1, None))[0] >= page.last_seq:
                    self._end(job, watch)
                    watcher.watch_finished(job)
        more = len(page.frames) >= self._page_size
        if job in self._dirty or more:
            self._dirty.discard(job)
            self.request_catch_up(job, None)

    def report(self, jobs: str | list[str], error: ServiceError) -> None:
        """One error frame per watch and outage; the watch itself stays."""
        for job in [jobs] if isinstance(jobs, str) else jobs:
            for watch in self.feeds.get(job, {}).values():
                if not watch.error_sent:
                    watch.error_sent = True
                    watch.watcher.watch_failed(job, error.code, error.message)


class HubDelivery:
    """The part of a `Delivery` that is the hub's: both modes route watches through one."""

    hub: Hub

    def watch(self, job: str, watcher: Watcher, after_seq: int) -> None:
        self.hub.watch(job, watcher, after_seq)

    def unwatch(self, job: str, watcher: Watcher) -> None:
        self.hub.unwatch(job, watcher)

    def drained(self, watcher: Watcher) -> None:
        self.hub.drained(watcher)

    @property
    def watch_count(self) -> int:
        return self.hub.watch_count
