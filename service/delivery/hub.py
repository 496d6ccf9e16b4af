"""The hub: the one `Delivery`. Who watches what, flow control, and catch-up from the stream.

Live frames come in from a `LiveSource` (pubsub, xread, memory) through `publish`; stored
frames come in through catch-up, which reads the job's stream from each watch's own position.
Both paths apply one rule per watch, so they can interleave freely:

    a frame with seq == watch.last_seq + 1 is offered to the watcher; lower is a duplicate and
    dropped; higher means the watch missed something, and the job is queued for catch-up.

Flow control: a watcher that refuses a frame (its client has `MAX_SEND_QUEUE_BYTES` waiting)
is paused for that job: it is offered no live frames, and it is left out of catch-up reads,
until it reports that it drained. Then it is caught up from where it stopped, the job's stream
being the durable copy. A catch-up reads, for each distinct position among a job's unpaused
watches, one page bounded in events and in bytes (never more than the roomiest of those
watchers can take, and no watcher is promised more than its room across one round trip), so
a slow watcher never holds back a fast one and a replay of any event size fits.

Catch-up is done by one task, many reads per round trip and two round trips under way at once
(Redis serves one while the gateway hands out the other). Each job's record says
where its catch-up stands (idle, pending, reading, or reading and missed something since, to
be read again right after), so nothing falls between a read and a notification.

A different Redis server (a failover, a restart, a full resync: its run id or replication id
changed, see `ServerIdentity`) may hold a different history than the one already delivered.
From the moment any connection sees one, every watched job is unverified: live frames for it
are held back, and its next catch-up also reads the stored entry at each watch's position and
compares it with the frame that watch last received. A watch whose history was cut or
rewritten ends with `gone`; the others go on as if nothing happened.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from service.aio import stop_tasks
from service.backoff import reconnect_delay_s
from service.codec import FrameError, FrameHead, frame_head, stored_seq
from service.delivery.base import CatchUpCause, LiveSource, Watcher
from service.delivery.supervise import restart_forever
from service.model import ErrorCode, EventKind, ServiceError
from service.server_identity import ServerIdentity
from service.stats import GatewayStats
from service.streams import Page, PageReader, PageRequest

log = logging.getLogger(__name__)

READS_PER_ROUND_TRIP = 500
# Round trips under way at once: Redis serves the next while the gateway hands out the last.
ROUND_TRIPS_IN_FLIGHT = 2
GONE_EXPIRED = "the job's results have expired (or the job never existed)"
GONE_REWOUND = (
    "the position asked for is past the job's last stored event "
    "(results were lost in a Redis failover); it cannot be served in full"
)
GONE_MALFORMED = "the job's stored events cannot be read (a malformed entry); ask its owner"
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


class CatchUp(Enum):
    """Where a job's catch-up stands."""

    IDLE = "idle"
    PENDING = "pending"  # queued for the catch-up task
    READING = "reading"  # a read is in flight
    DIRTY = "dirty"  # in flight, and something was missed since: read again right after


@dataclass(eq=False, slots=True)
class Watch:
    watcher: Watcher
    last_seq: int
    # The watcher refused a frame or had no room: no live frames, no reads, until it drains.
    paused: bool = False
    # The position the client asked for was checked against the stream (MAX_REPLAY_EVENTS).
    started: bool = False
    error_sent: bool = False
    # The last frame delivered (a reference, not a copy), to compare with what a different
    # server stores at `last_seq`; None when the position came from the client.
    last_frame: bytes | None = None


@dataclass(eq=False, slots=True)
class Feed:
    """Everything the hub knows of one watched job."""

    job: str
    watches: dict[Watcher, Watch] = field(default_factory=dict)
    catch_up: CatchUp = CatchUp.IDLE
    unverified: bool = False  # seen on a server that may hold a different history


@dataclass(eq=False, slots=True)
class Read:
    """One page to read for some of a feed's watches, all at the same position."""

    feed: Feed
    after_seq: int
    max_bytes: int
    watches: list[Watch]


class Hub:
    """Implements `Delivery` for the gateway and `LiveSink` for its live source."""

    def __init__(
        self,
        reader: PageReader,
        stats: GatewayStats,
        source: LiveSource,
        *,
        page_size: int,
        max_replay_events: int = 0,
        server: ServerIdentity | None = None,
    ) -> None:
        self._reader = reader
        self._source = source
        self.mode = source.mode
        self._task: asyncio.Task[None] | None = None
        self._catch_up_down = False
        self._server = server or ServerIdentity()
        self._generation = self._server.generation
        self._stats = stats
        self._page_size = page_size
        self._max_replay = max_replay_events  # 0: no limit
        self.feeds: dict[str, Feed] = {}
        # Jobs to catch up, in order; a feed is in it while its state is PENDING (a name whose
        # feed is gone or no longer pending is skipped).
        self._pending: deque[str] = deque()
        self._paused: dict[Watcher, set[str]] = {}  # jobs paused until the watcher drains
        self._wake = asyncio.Event()
        # Bytes that round trips under way may still bring each watcher (its room, promised).
        self._promised: dict[Watcher, int] = {}
        self._failures = 0  # round trips failed in a row, for the back-off
        self.watch_count = 0

    @property
    def paused_count(self) -> int:
        """Watches waiting for their client to drain."""
        return sum(len(jobs) for jobs in self._paused.values())

    @property
    def catch_up_backlog(self) -> int:
        """Jobs waiting for, or in, a catch-up read."""
        return sum(1 for feed in self.feeds.values() if feed.catch_up is not CatchUp.IDLE)

    def snapshot(self, busiest: int) -> dict[str, Any]:
        top = heapq.nlargest(busiest, self.feeds.values(), key=lambda feed: len(feed.watches))
        return {
            "ready": self.ready(),
            "watches": self.watch_count,
            "jobs_watched": len(self.feeds),
            "paused_watches": self.paused_count,
            "catch_up_backlog": self.catch_up_backlog,
            "busiest_jobs": [
                {"job": feed.job, "watchers": len(feed.watches), "catch_up": feed.catch_up.value}
                for feed in top
            ],
            "live": self._source.describe(),
        }

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(
            restart_forever(
                "the catch-up task",
                self.run,
                on_crash=self._catch_up_crashed,
                on_restart=self._catch_up_restarted,
            ),
            name="catch-up",
        )
        await self._source.start(self)

    async def stop(self) -> None:
        await self._source.stop()
        if self._task is not None:
            await stop_tasks([self._task])

    def ready(self) -> bool:
        return self._source.ready() and not self._catch_up_down

    def _catch_up_crashed(self, _error: BaseException) -> None:
        self._catch_up_down = True

    def _catch_up_restarted(self) -> None:
        self._catch_up_down = False
        # What was being read when it failed: read everything again.
        for feed in self.feeds.values():
            feed.catch_up = CatchUp.IDLE
        self._pending.clear()
        self._promised.clear()
        self.missed(None, CatchUpCause.RESTART)

    # -- watches -------------------------------------------------------------------------------

    def watch(self, job: str, watcher: Watcher, after_seq: int) -> None:
        feed = self.feeds.get(job)
        if feed is None:
            feed = self.feeds[job] = Feed(job)
            self._source.follow(job, after_seq)
        previous = feed.watches.get(watcher)
        if previous is None:
            self.watch_count += 1
        elif previous.paused:
            self._forget_pause(job, watcher)
        feed.watches[watcher] = Watch(watcher, after_seq)
        self.request_catch_up(job, CatchUpCause.RESUME if after_seq else CatchUpCause.WATCH)

    def unwatch(self, job: str, watcher: Watcher) -> None:
        feed = self.feeds.get(job)
        if feed is None:
            return
        watch = feed.watches.pop(watcher, None)
        if watch is None:
            return
        self.watch_count -= 1
        if watch.paused:
            self._forget_pause(job, watcher)
        if not feed.watches:
            del self.feeds[job]
            self._source.unfollow(job)

    def _end(self, job: str, watch: Watch) -> None:
        self.unwatch(job, watch.watcher)
        watch.watcher.watch_ended(job)

    def _gone(self, job: str, watch: Watch, message: str) -> None:
        watch.watcher.watch_failed(job, ErrorCode.GONE, message)
        self._end(job, watch)

    # -- live frames ---------------------------------------------------------------------------

    def publish(self, job: str, frame: bytes) -> None:
        """A live frame for `job`: the subscriber's hot path, so it must stay cheap."""
        feed = self.feeds.get(job)
        if feed is None:
            return
        if self._server.generation != self._generation:
            self._server_changed()
        if feed.unverified:
            self.request_catch_up(job, None)  # held back until checked against the new server
            return
        try:
            head = frame_head(frame)
        except FrameError as e:
            stored = stored_seq(frame)
            if stored is not None:
                # An event too large to publish: read it from the stream, where it is.
                if any(w.last_seq < stored and not w.paused for w in feed.watches.values()):
                    self.request_catch_up(job, CatchUpCause.LARGE)
                return
            # Not a frame we wrote: say so, and read the job's stream (the durable copy).
            self._stats.malformed_frames += 1
            log.warning(
                "a live frame for job %s is malformed (%s); catching it up",
                job,
                e,
                extra={"job": job},
            )
            self.request_catch_up(job, CatchUpCause.GAP)
            return
        if self._offer(feed, feed.watches.values(), frame, head):
            self.request_catch_up(job, CatchUpCause.GAP)

    def _server_changed(self) -> None:
        self._generation = self._server.generation
        for feed in self.feeds.values():
            feed.unverified = True
        self._stats.failovers += 1
        log.warning(
            "checking %d watched job(s) against the new Redis server",
            len(self.feeds),
            extra={"cause": CatchUpCause.FAILOVER.value},
        )
        self.missed(None, CatchUpCause.FAILOVER)

    def _offer(self, feed: Feed, watches: Iterable[Watch], frame: bytes, head: FrameHead) -> bool:
        """Apply the delivery rule to `watches`; True if some watch is missing frames."""
        missed = False
        seq, kind = head
        terminal = kind is not EventKind.DATA
        ended: list[Watch] | None = None
        for watch in watches:
            if watch.paused:
                continue
            if seq == watch.last_seq + 1:
                if not watch.watcher.deliver(frame):
                    self._pause(feed.job, watch)
                    continue
                watch.last_seq = seq
                watch.last_frame = frame
                watch.error_sent = False
                if terminal:
                    if ended is None:
                        ended = []
                    ended.append(watch)
            elif seq > watch.last_seq + 1:
                missed = True
        for watch in ended or ():
            self._end(feed.job, watch)
        return missed

    # -- flow control --------------------------------------------------------------------------

    def _pause(self, job: str, watch: Watch) -> None:
        """The watcher is full; it owes us `drained`, which resumes this watch from the stream."""
        watch.paused = True
        self._paused.setdefault(watch.watcher, set()).add(job)
        self._stats.flow_control_pauses += 1

    def _forget_pause(self, job: str, watcher: Watcher) -> None:
        jobs = self._paused.get(watcher)
        if jobs is not None:
            jobs.discard(job)
            if not jobs:
                del self._paused[watcher]

    def drained(self, watcher: Watcher) -> None:
        for job in self._paused.pop(watcher, ()):
            feed = self.feeds.get(job)
            watch = feed.watches.get(watcher) if feed is not None else None
            if watch is not None and watch.paused:
                watch.paused = False
                self.request_catch_up(job, CatchUpCause.DRAINED)

    # -- catch-up ------------------------------------------------------------------------------

    def request_catch_up(self, job: str, cause: CatchUpCause | None) -> None:
        """Queue `job` for catch-up; `cause` is counted, None for a continuation."""
        feed = self.feeds.get(job)
        if feed is None:
            return
        if feed.catch_up is CatchUp.READING:
            # A read is in flight and may have missed this: another read follows it, counted
            # under this cause.
            feed.catch_up = CatchUp.DIRTY
        elif feed.catch_up is CatchUp.IDLE:
            feed.catch_up = CatchUp.PENDING
            self._pending.append(job)
            self._wake.set()
        else:
            return  # a read is queued already: it will see this
        if cause is not None:
            self._stats.catch_ups[cause] += 1

    def missed(self, jobs: Iterable[str] | None, cause: CatchUpCause) -> None:
        """A live source may have lost frames of `jobs` (None: of every job)."""
        for job in self.feeds if jobs is None else jobs:
            self.request_catch_up(job, cause)

    def server_changed(self, jobs: list[str]) -> None:
        """A source saw these jobs' node change (on a cluster, identity is per node)."""
        watched = [job for job in jobs if job in self.feeds]
        if not watched:
            return
        for job in watched:
            self.feeds[job].unverified = True
        self._stats.failovers += 1
        log.warning(
            "checking %d watched job(s) against their new Redis node",
            len(watched),
            extra={"cause": CatchUpCause.FAILOVER.value},
        )
        self.missed(watched, CatchUpCause.FAILOVER)

    async def run(self) -> None:
        """The catch-up task: runs until cancelled."""
        trips: set[asyncio.Task[None]] = set()

        def trip_done(task: asyncio.Task[None]) -> None:
            trips.discard(task)
            self._wake.set()  # a slot is free, and the watchers' promised room is back

        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending and len(trips) < ROUND_TRIPS_IN_FLIGHT:
                    trip = self._start_round_trip()
                    if trip is None:
                        break  # what is left waits for room promised to a trip under way
                    trips.add(trip)
                    trip.add_done_callback(trip_done)
        finally:
            await stop_tasks(trips)

    def _start_round_trip(self) -> asyncio.Task[None] | None:
        """The next batch's round trip, started (None: nothing to read now). A method of its
        own so that no local of `run` holds the batch's watchers while `run` waits: an ended
        client's objects are freed when its round trip is over."""
        reads, feeds, promised = self._next_batch()
        if not reads:
            return None
        return asyncio.create_task(self._round_trip(reads, feeds, promised))

    async def _round_trip(
        self, reads: list[Read], feeds: list[Feed], promised: dict[Watcher, int]
    ) -> None:
        try:
            await self._catch_up(reads, feeds)
            self._failures = 0
        except ServiceError as e:
            self._failures += 1
            self.report([feed.job for feed in feeds], e)
            await asyncio.sleep(reconnect_delay_s(self._failures))
        except Exception as e:
            # Never let catch-up die: say so, back off, and go on.
            self._failures += 1
            log.exception("catch-up of %d job(s) failed unexpectedly", len(feeds))
            error = ServiceError(f"internal error: {type(e).__name__}")
            self.report([feed.job for feed in feeds], error)
            await asyncio.sleep(reconnect_delay_s(self._failures))
        finally:
            for watcher, nbytes in promised.items():
                left = self._promised.get(watcher, 0) - nbytes
                if left > 0:
                    self._promised[watcher] = left
                else:
                    self._promised.pop(watcher, None)

    def _next_batch(self) -> tuple[list[Read], list[Feed], dict[Watcher, int]]:
        """The reads of the next round trip, the feeds they are for, and the room it takes."""
        reads: list[Read] = []
        feeds: list[Feed] = []
        promised: dict[Watcher, int] = {}  # bytes this round trip may bring each watcher
        already = self._promised  # and the round trips under way
        later: list[str] = []
        while self._pending and len(reads) < READS_PER_ROUND_TRIP:
            job = self._pending.popleft()
            feed = self.feeds.get(job)
            if feed is None or feed.catch_up is not CatchUp.PENDING:
                continue
            groups: dict[int, Read] = {}
            waits = False  # some watcher's room is promised to another read of this batch
            for watch in feed.watches.values():
                if watch.paused:
                    continue
                room = watch.watcher.room()
                if room <= 0:
                    self._pause(job, watch)
                    continue
                room -= promised.get(watch.watcher, 0) + already.get(watch.watcher, 0)
                if room <= 0:
                    waits = True
                    continue
                read = groups.get(watch.last_seq)
                if read is None:
                    groups[watch.last_seq] = Read(feed, watch.last_seq, room, [watch])
                else:
                    read.watches.append(watch)
                    read.max_bytes = max(read.max_bytes, room)
            if not groups:
                if waits:
                    later.append(job)  # stays pending: read in the next round trip
                else:
                    feed.catch_up = CatchUp.IDLE
                continue
            for read in groups.values():
                for watch in read.watches:
                    promised[watch.watcher] = promised.get(watch.watcher, 0) + read.max_bytes
            reads.extend(groups.values())
            feeds.append(feed)
            feed.catch_up = CatchUp.DIRTY if waits else CatchUp.READING
        self._pending.extend(later)
        for watcher, nbytes in promised.items():
            already[watcher] = already.get(watcher, 0) + nbytes
        return reads, feeds, promised

    async def _catch_up(self, reads: list[Read], feeds: list[Feed]) -> None:
        if self._server.generation != self._generation:
            self._server_changed()
        # Where each watch of an unverified job stood when the read was sent, to compare
        # with what the server stores there.
        sent = {
            feed.job: {w: (watch.last_seq, watch.last_frame) for w, watch in feed.watches.items()}
            for feed in feeds
            if feed.unverified
        }
        checks = {
            job: sorted({seq for seq, frame in positions.values() if frame is not None})
            for job, positions in sent.items()
        }
        requests = [PageRequest(r.feed.job, r.after_seq, r.max_bytes) for r in reads]
        generation = self._server.generation
        try:
            pages = await self._reader.pages(requests, self._page_size, checks)
        except BaseException:
            self._requeue(feeds)
            raise
        if self._server.generation != generation:
            # The server changed during this read: check everything against it first.
            self._requeue(feeds)
            self._server_changed()
            return
        stored = {page.job: page.stored for page in pages if page.job in sent and not page.unread}
        for feed in feeds:
            if feed.unverified and feed.job in stored and self.feeds.get(feed.job) is feed:
                self._verify(feed, sent[feed.job], stored.get(feed.job, {}))
        more: set[str] = set()
        for read, page in zip(reads, pages, strict=True):
            if page.unread:
                more.add(read.feed.job)  # read it in the next round trip
                continue
            self._apply(read, page)
            if page.more:
                more.add(read.feed.job)
        for feed in feeds:
            if self.feeds.get(feed.job) is not feed:
                continue
            again = feed.catch_up is CatchUp.DIRTY or feed.job in more
            feed.catch_up = CatchUp.IDLE
            if again:
                self.request_catch_up(feed.job, None)

    def _requeue(self, feeds: list[Feed]) -> None:
        for feed in feeds:  # try them again (after the back-off, if any)
            if self.feeds.get(feed.job) is feed:
                feed.catch_up = CatchUp.PENDING
                self._pending.append(feed.job)

    def _verify(
        self,
        feed: Feed,
        sent: dict[Watcher, tuple[int, bytes | None]],
        stored: dict[int, bytes | None],
    ) -> None:
        """End the watches whose delivered history the server no longer holds."""
        for watcher, (seq, delivered) in sent.items():
            watch = feed.watches.get(watcher)
            if watch is not None and delivered is not None and stored.get(seq) != delivered:
                self._gone(feed.job, watch, GONE_REWRITTEN)
        feed.unverified = False

    def _apply(self, read: Read, page: Page) -> None:
        feed = read.feed
        job = feed.job
        if self.feeds.get(job) is not feed:
            return
        after = read.after_seq
        served: list[Watch] = []
        for watch in read.watches:
            if feed.watches.get(watch.watcher) is not watch:
                continue  # unwatched, watched again, or ended while the read was out
            if not page.exists:
                self._gone(job, watch, GONE_EXPIRED)
            elif after > page.last_seq:
                self._gone(job, watch, GONE_REWOUND)
            elif not watch.started and 0 < self._max_replay < page.last_seq - after:
                # Refused before anything is sent: never a partial replay. Only the position
                # the client asked for is capped; a slow reader may fall behind further.
                self._gone(job, watch, gone_too_far(page.last_seq - after, self._max_replay))
            else:
                watch.started = True
                served.append(watch)
        for frame in page.frames:
            try:
                head = frame_head(frame)
            except FrameError as e:
                # A stored entry we cannot read: stop this page rather than skip it silently.
                self._stats.malformed_frames += 1
                log.error("job %s has a malformed stored event (%s)", job, e, extra={"job": job})
                for watch in served:
                    if feed.watches.get(watch.watcher) is watch:
                        self._gone(job, watch, GONE_MALFORMED)
                return
            self._offer(feed, served, frame, head)
        if page.finished and not page.frames and after >= page.last_seq:
            # Watched from after the terminal event: nothing will ever come; say so and end.
            for watch in served:
                if feed.watches.get(watch.watcher) is watch:
                    self._end(job, watch)
                    watch.watcher.watch_finished(job)

    def report(self, jobs: list[str] | None, error: ServiceError) -> None:
        """One error frame per watch and outage (None: every watched job); the watch stays."""
        for job in list(self.feeds) if jobs is None else jobs:
            feed = self.feeds.get(job)
            for watch in feed.watches.values() if feed is not None else ():
                if not watch.error_sent:
                    watch.error_sent = True
                    watch.watcher.watch_failed(job, error.code, error.message)
