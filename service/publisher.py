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
from typing import Any

import orjson
import redis.asyncio as redis
from redis.exceptions import NoScriptError

from service.keys import Keys
from service.model import EventKind
from service.redis_client import backoff_s, is_transient
from service.scripts import EMIT

log = logging.getLogger(__name__)

# Events per script call: keeps each atomic call short so Redis stays responsive.
EVENTS_PER_CALL = 256
# Events per pipeline: bounds the memory of one round trip.
EVENTS_PER_PIPELINE = 8192


class EmitError(Exception):
    """An event could not be written, for a reason that retrying will not fix."""


class JobLost(EmitError):
    """The job's meta hash is gone: its results expired, or Redis lost its data."""


class JobFinished(EmitError):
    """An event came after the job's terminal event."""


class TooManyEvents(EmitError):
    """The job reached the per-job event limit."""


_OUTCOMES: dict[int, type[EmitError]] = {1: JobLost, 2: JobFinished, 4: TooManyEvents}
_MESSAGES = {
    1: "the job is gone from Redis (expired, or Redis lost its data)",
    2: "the job already has its terminal event",
    3: "the job's seq moved under this writer (another worker wrote to it)",
    4: "the job reached its event limit",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Queued:
    writer: JobWriter
    seq: int
    kind: str
    ts: int
    data: bytes


@dataclass(eq=False)
class JobWriter:
    """The events of one running job: hands out seqs, and knows which are durable."""

    job: str
    emitter: Emitter
    last_seq: int = 0
    durable_seq: int = 0
    error: EmitError | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def emit(self, kind: EventKind, data: Any) -> int:
        """Queue one event and return its seq; waits only when the queue is full."""
        if self.error is not None:
            raise self.error
        payload = orjson.dumps(data)
        self.last_seq += 1
        await self.emitter.enqueue(_Queued(self, self.last_seq, kind.value, now_ms(), payload))
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
        self._changed.set()


class Emitter:
    """One per worker process: queues events from every job and flushes them in pipelines."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        ttl_s: int,
        max_events_per_job: int,
        max_queued: int = 50_000,
    ) -> None:
        self._client = client
        self._keys = keys
        self._ttl_ms = str(ttl_s * 1000)
        self._max_events = str(max_events_per_job)
        self._max_queued = max_queued
        self._queue: deque[_Queued] = deque()
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
        while len(self._queue) >= self._max_queued:
            self._room.clear()
            await self._room.wait()
        self._queue.append(item)
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
                size = min(len(self._queue), EVENTS_PER_PIPELINE)
                batch = [self._queue.popleft() for _ in range(size)]
                if len(self._queue) < self._max_queued:
                    self._room.set()
                await self._write(batch)
            self._idle.set()

    async def idle(self) -> None:
        """Wait until everything queued so far has been written (or given up on)."""
        await self._idle.wait()

    def _calls(self, batch: list[_Queued]) -> list[tuple[JobWriter, list[Any]]]:
        by_writer: dict[JobWriter, list[_Queued]] = {}
        for item in batch:
            by_writer.setdefault(item.writer, []).append(item)
        calls: list[tuple[JobWriter, list[Any]]] = []
        for writer, items in by_writer.items():
            for start in range(0, len(items), EVENTS_PER_CALL):
                args: list[Any] = [writer.job, self._ttl_ms, self._max_events]
                for item in items[start : start + EVENTS_PER_CALL]:
                    args += (item.seq, item.kind, item.ts, item.data)
                calls.append((writer, args))
        return calls

    async def _write(self, batch: list[_Queued]) -> None:
        pending = [(writer, args, False) for writer, args in self._calls(batch)]
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
                await asyncio.sleep(backoff_s(attempt, base_s=0.05, cap_s=2.0))
                continue
            if self.failing_since is not None:
                log.info(
                    "redis reachable again after %.1fs, emitting resumed",
                    time.monotonic() - self.failing_since,
                )
                self.failing_since = None
                self.writable.set()
            pending = self._settle(pending, results)

    async def _send(self, calls: list[tuple[JobWriter, list[Any], bool]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for writer, args, use_eval in calls:
            keys = [
                self._keys.events(writer.job),
                self._keys.meta(writer.job),
                self._keys.channel(writer.job),
            ]
            command = EMIT.eval_args(keys, args) if use_eval else EMIT.evalsha_args(keys, args)
            pipe.execute_command(*command)
        self.round_trips += 1
        return list(await pipe.execute(raise_on_error=False))

    def _settle(
        self, calls: list[tuple[JobWriter, list[Any], bool]], results: list[Any]
    ) -> list[tuple[JobWriter, list[Any], bool]]:
        """Apply one pipeline's replies; return the calls to send again."""
        retry: list[tuple[JobWriter, list[Any], bool]] = []
        retrying: set[JobWriter] = set()
        for (writer, args, _), result in zip(calls, results, strict=True):
            if writer in retrying:
                # An earlier call of this job is being re-sent: this one must follow it.
                retry.append((writer, args, True))
            elif isinstance(result, NoScriptError):
                retrying.add(writer)
                retry.append((writer, args, True))
            elif isinstance(result, Exception):
                if is_transient(result):
                    retrying.add(writer)
                    retry.append((writer, args, False))
                else:
                    log.error("emit for job %s failed: %s", writer.job, result)
                    writer._fail(EmitError(f"Redis refused the event: {result}"))
            else:
                written, last_seq, outcome = (int(x) for x in result)
                self.events_written += written
                writer._advance(last_seq)
                if outcome:
                    log.warning("emit for job %s stopped: %s", writer.job, _MESSAGES[outcome])
                    writer._fail(_OUTCOMES.get(outcome, EmitError)(_MESSAGES[outcome]))
        return retry
