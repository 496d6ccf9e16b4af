"""Writing result events: durable in the job's stream and published, atomically, in order.

Every event goes through the `emit` script, which appends it to the job's stream and publishes
the same frame on the job's channel in one atomic step. Handlers do not wait for a round trip
per event: `JobWriter.emit` queues the event and returns, and one flusher task per process
sends everything queued as one pipeline (one script call per job and chunk), so a fast handler
costs far less than one round trip per event. Order within a job holds because only one
pipeline is in flight at a time and a job's events keep their queue order inside it.

Guarantees:
- An event is either in the stream and published, or neither (the script is atomic).
- Re-sending is harmless: each event carries the seq it means to be, and the script skips a seq
  already written, so retries after a lost reply or a dropped connection never duplicate.
- While Redis is unreachable, queued events are kept in order and retried with capped backoff;
  `JobWriter.flushed` returns only once everything emitted so far is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
import redis.asyncio as redis
from redis.exceptions import NoScriptError

from service.backoff import retry_delay_s
from service.config import Settings
from service.keys import Keys
from service.model import EventKind
from service.redis_client import is_topology_change, is_transient
from service.scripts import EMIT

log = logging.getLogger(__name__)

# Events per script call, and bytes: keeps each atomic call short so Redis stays responsive.
EVENTS_PER_CALL = 256
BYTES_PER_CALL = 1024 * 1024
# Events per pipeline, and bytes: bounds the memory of one round trip.
EVENTS_PER_PIPELINE = 8192
BYTES_PER_PIPELINE = 8 * 1024 * 1024
# Frames larger than this are announced by position only; gateways read them from the stream.
NOTIFY_MAX_BYTES = 64 * 1024
# Data a process may queue for writing, beyond which handlers wait (back-pressure); at least
# twice the largest event, so one large event never blocks behind another.
MIN_QUEUED_BYTES = 8 * 1024 * 1024


class EmitError(Exception):
    """An event could not be written. `retryable`: whether trying again later may succeed
    (Redis unreachable, another writer holding the job) or not (the job ended, a limit)."""

    retryable: ClassVar[bool] = False


class JobLost(EmitError):
    """The job's meta hash is gone: its results expired, or Redis lost its data."""


class JobFinished(EmitError):
    """An event came after the job's terminal event."""


class LimitReached(EmitError):
    """The job reached one of its limits: it may still be failed with a terminal event."""


class TooManyEvents(LimitReached):
    """The job reached the per-job event limit."""


class EventTooLarge(LimitReached):
    """One event's frame is over MAX_EVENT_BYTES."""


class JobTooLarge(LimitReached):
    """The job's stored events would pass MAX_JOB_BYTES."""


_OUTCOMES: dict[int, type[EmitError]] = {
    1: JobLost,
    2: JobFinished,
    4: TooManyEvents,
    5: EventTooLarge,
    6: JobTooLarge,
}
_MESSAGES = {
    1: "the job is gone from Redis (expired, or Redis lost its data)",
    2: "the job already has its terminal event",
    3: "the job's seq moved under this writer (another worker wrote to it)",
    4: "the job reached its event limit",
    5: "an event is larger than MAX_EVENT_BYTES",
    6: "the job's events would pass MAX_JOB_BYTES",
}


@dataclass(frozen=True)
class EmitLimits:
    """What one job may write, as the emit script enforces it, and how it notifies."""

    max_events: int
    max_event_bytes: int
    max_job_bytes: int
    notify_max_bytes: int = NOTIFY_MAX_BYTES
    sharded: bool = False  # a Redis Cluster: notify with SPUBLISH (sharded Pub/Sub)

    def argv(self, job: str, ttl_ms: int) -> list[Any]:
        """The emit script's arguments before the events."""
        return [
            job,
            ttl_ms,
            self.max_events,
            self.max_event_bytes,
            self.max_job_bytes,
            self.notify_max_bytes,
            "SPUBLISH" if self.sharded else "PUBLISH",
        ]


def emit_limits(settings: Settings) -> EmitLimits:
    """The limits every writer of a deployment applies (resultcast's workers and producers)."""
    return EmitLimits(
        max_events=settings.max_events_per_job,
        max_event_bytes=settings.max_event_bytes,
        max_job_bytes=settings.max_job_bytes,
        sharded=settings.redis_cluster,
    )


# A script call: its job's writer, its arguments, EVAL (not EVALSHA), the writer's generation.
_Call = tuple["JobWriter", list[Any], bool, int]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Queued:
    writer: JobWriter
    seq: int
    kind: str
    ts: int
    data: bytes
    generation: int  # the writer's, when queued: events queued before a limit are dropped


@dataclass(eq=False)
class JobWriter:
    """The events of one running job: hands out seqs, and knows which are durable."""

    job: str
    emitter: Emitter
    last_seq: int = 0
    durable_seq: int = 0
    error: EmitError | None = None
    generation: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def reopen_after_limit(self) -> None:
        """After a limit was reached, let the job's terminal event follow its last durable
        one; whatever was queued after the refused event is dropped, not written."""
        if isinstance(self.error, LimitReached):
            self.error = None
            self.last_seq = self.durable_seq

    async def emit(self, kind: EventKind, data: Any) -> int:
        """Queue one event and return its seq; waits only when the queue is full."""
        if self.error is not None:
            raise self.error
        return await self.emit_json(kind, orjson.dumps(data))

    async def emit_json(self, kind: EventKind, payload: bytes) -> int:
        """`emit` of data already serialised to JSON text."""
        if self.error is not None:
            raise self.error
        limit = self.emitter.limits.max_event_bytes
        if len(payload) > limit:
            # Refused here, before it takes queue space; the script checks the whole frame.
            raise EventTooLarge(
                f"an event of {len(payload)} bytes is over MAX_EVENT_BYTES ({limit})"
            )
        self.last_seq += 1
        item = _Queued(self, self.last_seq, kind.value, now_ms(), payload, self.generation)
        await self.emitter.enqueue(item)
        return self.last_seq

    async def flushed(self) -> None:
        """Wait until every event emitted so far is durable; raise if one cannot be."""
        while self.error is None and self.durable_seq < self.last_seq:
            self._changed.clear()
            await self._changed.wait()
        if self.error is not None:
            raise self.error

    def _advance(self, durable_seq: int) -> None:
        self.durable_seq = max(self.durable_seq, durable_seq)
        self._changed.set()

    def _fail(self, error: EmitError) -> None:
        if self.error is None:
            self.error = error
            if isinstance(error, LimitReached):
                self.generation += 1
        self._changed.set()


class Emitter:
    """One per worker process: queues events from every job and flushes them in pipelines."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        ttl_s: int,
        limits: EmitLimits,
        max_queued: int = 50_000,
    ) -> None:
        self._client = client
        self._keys = keys
        self._ttl_ms = ttl_s * 1000
        self.limits = limits
        self._max_queued = max_queued
        self._max_queued_bytes = max(MIN_QUEUED_BYTES, 2 * limits.max_event_bytes)
        self._queue: deque[_Queued] = deque()
        self.queued_bytes = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.round_trips = 0
        self.events_written = 0
        self.failing_since: float | None = None
        self.writable = asyncio.Event()  # cleared while writes fail
        self.writable.set()

    def writer(self, job: str, last_seq: int) -> JobWriter:
        return JobWriter(job, self, last_seq=last_seq, durable_seq=last_seq)

    async def enqueue(self, item: _Queued) -> None:
        """Queue an event; wait while the queue is full in events or in bytes."""
        while self._queue and (
            len(self._queue) >= self._max_queued or self.queued_bytes >= self._max_queued_bytes
        ):
            self._room.clear()
            await self._room.wait()
        self._queue.append(item)
        self.queued_bytes += len(item.data)
        self._idle.clear()
        self._wake.set()

    def failing_for_s(self) -> float:
        """How long writes have been failing (0 while they succeed)."""
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        """The flusher: runs until cancelled, one pipeline in flight at a time."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._next_batch()
                self._room.set()  # room in events now; in bytes once the batch is written
                await self._write(batch)
                self.queued_bytes -= sum(len(item.data) for item in batch)
                self._room.set()  # enqueue checks again what room there is
            self._idle.set()

    def _next_batch(self) -> list[_Queued]:
        """The next pipeline's events: bounded in events and in bytes (at least one)."""
        queue, size = self._queue, 0
        batch: list[_Queued] = []
        while (
            queue and len(batch) < EVENTS_PER_PIPELINE and (not batch or size < BYTES_PER_PIPELINE)
        ):
            item = queue.popleft()
            batch.append(item)
            size += len(item.data)
        return batch

    async def idle(self) -> None:
        """Wait until everything queued so far has been written (or given up on)."""
        await self._idle.wait()

    def _calls(self, batch: list[_Queued]) -> list[tuple[JobWriter, list[Any]]]:
        by_writer: dict[JobWriter, list[_Queued]] = {}
        for item in batch:
            if item.generation == item.writer.generation:  # else queued before a limit
                by_writer.setdefault(item.writer, []).append(item)
        calls: list[tuple[JobWriter, list[Any]]] = []
        for writer, items in by_writer.items():
            head = self.limits.argv(writer.job, self._ttl_ms)
            args: list[Any] = list(head)
            size = 0
            for item in items:
                if len(args) > len(head) and (
                    len(args) - len(head) >= 4 * EVENTS_PER_CALL or size >= BYTES_PER_CALL
                ):
                    calls.append((writer, args))
                    args, size = list(head), 0
                args += (item.seq, item.kind, item.ts, item.data)
                size += len(item.data)
            calls.append((writer, args))
        return calls

    async def _write(self, batch: list[_Queued]) -> None:
        pending = [(writer, args, False, writer.generation) for writer, args in self._calls(batch)]
        attempt = 0
        while pending:
            try:
                results = await self._send(pending)
            except Exception as e:
                if not is_transient(e):
                    raise
                attempt += 1
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    self.writable.clear()
                    log.warning(
                        "redis unreachable while emitting, keeping %d events and retrying: %s: %s",
                        len(batch),
                        type(e).__name__,
                        e,
                    )
                await asyncio.sleep(retry_delay_s(attempt, base_s=0.05, cap_s=2.0))
                continue
            if self.failing_since is not None:
                log.info(
                    "redis reachable again after %.1fs, emitting resumed",
                    time.monotonic() - self.failing_since,
                )
                self.failing_since = None
                self.writable.set()
            pending, refused = self._settle(pending, results)
            if refused:  # a slot moving, a server loading: back off before sending again
                attempt += 1
                await asyncio.sleep(retry_delay_s(attempt, base_s=0.05, cap_s=2.0))

    async def _send(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for writer, args, use_eval, _ in calls:
            keys = [
                self._keys.events(writer.job),
                self._keys.meta(writer.job),
                self._keys.channel(writer.job),
            ]
            command = EMIT.eval_args(keys, args) if use_eval else EMIT.evalsha_args(keys, args)
            pipe.execute_command(*command)
        self.round_trips += 1
        return list(await pipe.execute(raise_on_error=False))

    def _settle(self, calls: list[_Call], results: list[Any]) -> tuple[list[_Call], bool]:
        """Apply one pipeline's replies; return the calls to send again, and whether any was
        refused for now (a moving slot, a loading server) rather than only missing a script."""
        retry: list[_Call] = []
        retrying: set[JobWriter] = set()
        refused = False
        for (writer, args, _, generation), result in zip(calls, results, strict=True):
            if generation != writer.generation:
                continue  # events queued before the job reached a limit: dropped
            if writer in retrying:
                # An earlier call of this job is being re-sent: this one must follow it.
                retry.append((writer, args, True, generation))
            elif isinstance(result, NoScriptError):
                retrying.add(writer)
                retry.append((writer, args, True, generation))
            elif isinstance(result, Exception):
                # A slot moving (MOVED, ASK, TRYAGAIN, redirections run out) is retried like
                # a connection that failed: the script is idempotent per seq.
                if is_transient(result) or is_topology_change(result):
                    refused = True
                    retrying.add(writer)
                    retry.append((writer, args, False, generation))
                else:
                    log.error(
                        "emit for job %s failed: %s",
                        writer.job,
                        result,
                        extra={"job": writer.job},
                    )
                    writer._fail(EmitError(f"Redis refused the event: {result}"))
            else:
                written, last_seq, outcome = (int(x) for x in result)
                self.events_written += written
                writer._advance(last_seq)
                if outcome:
                    log.warning(
                        "emit for job %s stopped: %s",
                        writer.job,
                        _MESSAGES[outcome],
                        extra={"job": writer.job},
                    )
                    writer._fail(_OUTCOMES.get(outcome, EmitError)(_MESSAGES[outcome]))
        return retry, refused
