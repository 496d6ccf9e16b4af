"""The job worker: takes jobs from the jobs stream, runs them, and emits their events.

Jobs come from a consumer group, so each job goes to one worker; with JOB_STREAMS > 1 from
several intake streams, each read by its own blocking loop, all sharing the worker's slots.
A job is acknowledged only once its terminal event is durable; a worker that dies leaves its
jobs pending, and another worker claims them (`XAUTOCLAIM`) once they have been idle for
`JOB_VISIBILITY_S`. Running jobs are kept fresh by a heartbeat so a slow job is not taken from
a live worker. Each start counts an attempt; past `JOB_MAX_ATTEMPTS` the job is failed with a
message saying so.

On SIGTERM/SIGINT the worker stops taking jobs, lets running ones finish for up to
`WORKER_STOP_GRACE_S`, then cancels the rest and hands them back for others to claim at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import ResponseError

from service.aio import stop_tasks
from service.backoff import reconnect_delay_s, retry_delay_s
from service.config import Settings
from service.gc_pauses import freeze_what_startup_made
from service.handlers import Handler, Job, JobFailed, time_limit_s
from service.keys import WORKERS_GROUP, Keys
from service.maintenance import run_maintenance, sample_queue
from service.memory import releasing_free_memory
from service.metrics import QueueDepth, WorkerCollector
from service.migrate import migrate, require_layout
from service.model import EventKind, JobStatus
from service.publisher import (
    EmitError,
    Emitter,
    EventTooLarge,
    JobLost,
    JobTooLarge,
    JobWriter,
    TooManyEvents,
    emit_limits,
    now_ms,
)
from service.redis_client import RedisFactory, is_transient, map_redis_error, redis_errors, retrying
from service.scripts import START_JOB

log = logging.getLogger(__name__)


@dataclass
class _Running:
    stream: str  # the intake stream the job came from
    entry_id: str
    job: str
    task: asyncio.Task[None] | None = None
    writer: JobWriter | None = None
    handed_back: bool = False


@dataclass
class Worker:
    settings: Settings
    handlers: dict[str, Handler]
    concurrency: int = 4
    consumer: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
    )

    def __post_init__(self) -> None:
        self.keys = Keys(self.settings.key_prefix, self.settings.job_streams)
        self.factory = RedisFactory(self.settings, "worker", concurrency=self.concurrency)
        self.client = self.factory.commands()
        # A blocking read per intake stream, each holding a connection while it waits.
        self.intake = self.factory.blocking(
            self.settings.worker_block_ms, max_connections=self.settings.job_streams
        )
        self.emitter = Emitter(
            self.client,
            self.keys,
            ttl_s=self.settings.result_ttl_s,
            limits=emit_limits(self.settings),
        )
        self.running: dict[tuple[str, str], _Running] = {}  # by (stream, entry id)
        self._reserved = 0  # slots held by intake reads under way
        self._slot_free = asyncio.Event()
        self.jobs_done = 0
        self.jobs_finished: Counter[str] = Counter()
        self.queue_depth: QueueDepth | None = None
        self.intake_paused = False

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then shut down gracefully."""
        await require_layout(self.client, self.keys)
        await self._register_kinds()
        log.info(
            "worker %s ready: concurrency %d, kinds %s",
            self.consumer,
            self.concurrency,
            ", ".join(sorted(self.handlers)),
        )
        background = [
            asyncio.create_task(self.emitter.run(), name="emitter"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(
                run_maintenance(
                    self.client,
                    self.keys,
                    holder=self.consumer,
                    lease_ttl_s=self.settings.maintenance_lease_s,
                    interval_s=self.settings.maintenance_interval_s,
                    extra=self._sample_queue,
                ),
                name="maintenance",
            ),
        ]
        # One intake loop per stream (a blocking read names one stream: on a cluster, streams
        # of different slots cannot share one command); they share the worker's slots.
        streams = self.keys.job_stream_keys
        intake = [
            asyncio.create_task(self._take_jobs(stream, len(streams)), name=f"intake-{stream}")
            for stream in streams
        ]
        try:
            await stop.wait()
        finally:
            await stop_tasks(intake)
            await self._finish_running()
            await stop_tasks(background)
            await self.client.aclose()
            await self.intake.aclose()
            log.info("worker %s stopped after %d jobs", self.consumer, self.jobs_done)

    async def _sample_queue(self) -> None:
        waiting, pending, age_s = 0, Counter[str](), 0.0
        for stream in self.keys.job_stream_keys:
            w, p, a = await sample_queue(self.client, stream)
            waiting, age_s = waiting + w, max(age_s, a)
            pending.update(p)
        self.queue_depth = QueueDepth(time.monotonic(), waiting, dict(pending), age_s)

    def sampled_queue(self) -> QueueDepth | None:
        """The last sample while it is fresh, i.e. while this process holds the lease."""
        depth = self.queue_depth
        fresh_s = 2 * self.settings.maintenance_interval_s + self.settings.maintenance_lease_s
        if depth is None or time.monotonic() - depth.sampled_at > fresh_s:
            return None
        return depth

    def collector(self) -> WorkerCollector:
        return WorkerCollector(
            self.factory,
            jobs_finished=lambda: dict(self.jobs_finished),
            events_written=lambda: self.emitter.events_written,
            emit_round_trips=lambda: self.emitter.round_trips,
            running=lambda: len(self.running),
            queue=self.sampled_queue,
            intake_paused=lambda: self.intake_paused,
        )

    async def _register_kinds(self) -> None:
        now = now_ms()
        with redis_errors("register kinds"):
            await retrying(
                lambda: self.client.hset(self.keys.kinds, mapping=dict.fromkeys(self.handlers, now))
            )

    # -- taking jobs -------------------------------------------------------------------------

    async def _take_jobs(self, stream: str, streams: int) -> None:
        """New jobs of one intake stream first, then idle ones a dead worker left behind."""
        attempt = 0
        next_claim = 0.0
        loop = asyncio.get_running_loop()
        # With several streams, each loop reads a share of the slots, so no stream waits
        # behind another's blocking read.
        share = max(1, self.concurrency // streams)
        while True:
            await self._pause_while_unwritable()
            free = await self._reserve(share)
            try:
                entries: list[Any] = []
                if loop.time() >= next_claim:
                    entries = await self._claim_abandoned(stream, free)
                    next_claim = loop.time() + self.settings.job_visibility_s / 2
                if not entries:
                    entries = await self._read_new(stream, free)
                attempt = 0
            except Exception as e:
                self._release(free)
                attempt += 1
                log.warning("taking jobs failed (attempt %d): %s: %s", attempt, type(e).__name__, e)
                if isinstance(e, ResponseError) and str(e).startswith("NOGROUP"):
                    await self._restore_layout()
                await asyncio.sleep(reconnect_delay_s(attempt))
                continue
            self._release(free)  # and at once taken by the jobs read, if any
            for entry_id, fields in entries:
                self._start(stream, entry_id.decode(), fields)

    async def _pause_while_unwritable(self) -> None:
        """Take no new job while events cannot be written: they would only pile up here."""
        bound_s = self.settings.worker_pause_after_s
        if self.emitter.failing_for_s() <= bound_s:
            return
        self.intake_paused = True
        log.warning(
            "not taking new jobs: events could not be written for %.0fs; %d kept in order",
            self.emitter.failing_for_s(),
            self.emitter.queued,
        )
        await self.emitter.writable.wait()
        self.intake_paused = False
        log.info("events are written again; taking new jobs")

    async def _restore_layout(self) -> None:
        """The consumer group is gone: Redis lost its data (restarted empty, or a failover to
        an empty replica). Migrations are idempotent and locked, so re-apply them rather than
        wait for an operator; jobs submitted from now on run again."""
        log.error(
            "the jobs stream's consumer group is missing (Redis lost its data?); "
            "re-applying the migrations"
        )
        try:
            await migrate(self.client, self.keys, report=log.info)
            await self._register_kinds()
        except Exception as e:
            log.error("could not restore the Redis layout: %s: %s", type(e).__name__, e)

    async def _reserve(self, most: int) -> int:
        """Hold up to `most` free slots for one read; at least one, waiting for it."""
        while len(self.running) + self._reserved >= self.concurrency:
            self._slot_free.clear()
            await self._slot_free.wait()
        held = min(most, self.concurrency - len(self.running) - self._reserved)
        self._reserved += held
        return held

    def _release(self, held: int) -> None:
        self._reserved -= held
        self._slot_free.set()

    async def _read_new(self, stream: str, count: int) -> list[Any]:
        reply: Any = await self.intake.xreadgroup(
            WORKERS_GROUP,
            self.consumer,
            {stream: ">"},
            count=count,
            block=self.settings.worker_block_ms,
        )
        return list(reply[0][1]) if reply else []

    async def _claim_abandoned(self, stream: str, count: int) -> list[Any]:
        min_idle_ms = int(self.settings.job_visibility_s * 1000)
        reply = await self.client.xautoclaim(
            stream, WORKERS_GROUP, self.consumer, min_idle_ms, "0-0", count=count
        )
        claimed, deleted = reply[1], reply[2] if len(reply) > 2 else []
        if deleted:
            # Entries trimmed while pending: nothing to run, just clear them from the group.
            await self.client.xack(stream, WORKERS_GROUP, *deleted)
        claimed = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if claimed:
            log.info("claimed %d abandoned job(s)", len(claimed))
        return claimed

    def _start(self, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        job = fields.get(b"job", b"").decode()
        running = _Running(stream, entry_id, job)
        self.running[stream, entry_id] = running
        running.task = asyncio.create_task(self._run_job(running, fields), name=f"job-{job}")

    async def _heartbeat(self) -> None:
        """Keep running jobs' idle time low so no other worker claims them."""
        while True:
            await asyncio.sleep(self.settings.job_visibility_s / 3)
            by_stream: dict[str, list[Any]] = {}
            for r in self.running.values():
                if not r.handed_back:
                    by_stream.setdefault(r.stream, []).append(r.entry_id)
            for stream, ids in by_stream.items():
                try:
                    await self.client.xclaim(
                        stream, WORKERS_GROUP, self.consumer, 0, ids, justid=True
                    )
                except Exception as e:
                    log.warning("heartbeat for %d running job(s) failed: %s", len(ids), e)

    # -- running one job ---------------------------------------------------------------------

    async def _run_job(self, running: _Running, fields: dict[bytes, bytes]) -> None:
        try:
            await self._execute(running, fields)
        except asyncio.CancelledError:
            await self._hand_back(running)
            raise
        except Exception as e:
            # The job stays pending and another worker (or this one) will claim it later.
            if map_redis_error(e) is not None:  # Redis out of reach: an outage, not a bug
                log.warning(
                    "job %s could not be completed here (Redis: %s); it stays pending and "
                    "will be claimed again",
                    running.job,
                    e,
                    extra={"job": running.job},
                )
            else:
                log.error(
                    "job %s could not be completed here: %s: %s",
                    running.job,
                    type(e).__name__,
                    e,
                    extra={"job": running.job},
                )
        finally:
            self.running.pop((running.stream, running.entry_id), None)
            self._slot_free.set()

    async def _execute(self, running: _Running, fields: dict[bytes, bytes]) -> None:
        job, kind = running.job, fields.get(b"kind", b"").decode()
        with redis_errors("start job", self.factory.breaker):
            attempts, last_seq, status = await retrying(
                lambda: START_JOB(self.client, [self.keys.meta(job)], [now_ms()])
            )
        status = status.decode() if isinstance(status, bytes) else status
        if not status:
            log.warning(
                "job %s is gone from Redis (expired or lost); dropping it",
                job,
                extra={"job": job},
            )
        elif status in (JobStatus.DONE, JobStatus.FAILED):
            log.info("job %s was already %s; acknowledging it", job, status, extra={"job": job})
        else:
            writer = running.writer = self.emitter.writer(job, int(last_seq))
            await self._run_handler(writer, kind, fields.get(b"payload", b"{}"), int(attempts))
        await self._acknowledge(running.stream, running.entry_id)
        self.jobs_done += 1

    async def _run_handler(
        self, writer: JobWriter, kind: str, raw_payload: bytes, attempts: int
    ) -> None:
        handler = self.handlers.get(kind)
        terminal: tuple[EventKind, Any]
        if attempts > self.settings.job_max_attempts:
            message = f"job failed after {attempts - 1} attempts (its workers stopped or died)"
            terminal = (EventKind.FAILED, {"message": message})
        elif handler is None:
            terminal = (EventKind.FAILED, {"message": f"no handler for job kind {kind!r}"})
        else:
            terminal = await self._call(handler, writer, kind, raw_payload, attempts)
        writer.reopen_after_limit()  # a job failed for a limit still gets its terminal event
        try:
            await writer.emit(*terminal)
            await writer.flushed()
            self.jobs_finished[terminal[0].value] += 1
        except JobLost:
            log.warning(
                "job %s vanished from Redis while running; dropping it",
                writer.job,
                extra={"job": writer.job},
            )
        except EmitError as e:
            log.warning(
                "job %s: terminal event not written: %s",
                writer.job,
                e,
                extra={"job": writer.job},
            )

    async def _call(
        self, handler: Handler, writer: JobWriter, kind: str, raw_payload: bytes, attempts: int
    ) -> tuple[EventKind, Any]:
        async def emit(data: Any) -> None:
            await writer.emit(EventKind.DATA, data)

        try:
            payload = orjson.loads(raw_payload)
            if not isinstance(payload, dict):
                raise TypeError("payload is not an object")
        except (orjson.JSONDecodeError, TypeError):
            return EventKind.FAILED, {"message": "the job's payload is not a JSON object"}
        job = Job(writer.job, kind, payload, attempts, writer.last_seq, emit)
        limit_s = time_limit_s(handler, self.settings.job_timeout_s)
        deadline = asyncio.timeout(limit_s)
        try:
            async with deadline:
                result = await handler(job)
            await writer.flushed()
        except TimeoutError as e:
            if not deadline.expired():  # the handler's own timeout, not the job's
                return self._handler_raised(writer.job, kind, e)
            log.info(
                "job %s (%s) ran past its time limit of %gs",
                writer.job,
                kind,
                limit_s,
                extra={"job": writer.job},
            )
            await self._flushed_or_lost(writer)
            message = f"the job ran longer than its time limit of {limit_s:g} s (JOB_TIMEOUT_S)"
            return EventKind.FAILED, {"message": message}
        except JobFailed as e:
            return EventKind.FAILED, {"message": e.message}
        except TooManyEvents:
            limit = self.settings.max_events_per_job
            return EventKind.FAILED, {"message": f"job exceeded the limit of {limit} events"}
        except EventTooLarge as e:
            limit = self.settings.max_event_bytes
            return EventKind.FAILED, {
                "message": f"the job wrote an event over the limit of {limit} bytes "
                f"(MAX_EVENT_BYTES): {e}"
            }
        except JobTooLarge:
            limit = self.settings.max_job_bytes
            return EventKind.FAILED, {
                "message": f"the job's events passed the limit of {limit} bytes (MAX_JOB_BYTES)"
            }
        except EmitError:
            raise
        except Exception as e:
            return self._handler_raised(writer.job, kind, e)
        return EventKind.DONE, result

    @staticmethod
    def _handler_raised(job: str, kind: str, error: Exception) -> tuple[EventKind, Any]:
        log.error("handler for job %s (%s) raised", job, kind, exc_info=error, extra={"job": job})
        return EventKind.FAILED, {"message": f"the job's handler failed ({type(error).__name__})"}

    async def _flushed_or_lost(self, writer: JobWriter) -> None:
        """What a stopped handler emitted is written before its terminal event (or lost)."""
        with suppress(EmitError):
            await writer.flushed()

    async def _acknowledge(self, stream: str, entry_id: str) -> None:
        """XACK a finished job's entry: transient failures are retried with back-off; a
        permanent one (NOPERM, WRONGTYPE, ...) is logged once and the slot is given back,
        since the job's terminal event is durable already and a worker that claims the entry
        later only acknowledges it."""
        attempt = 0
        while True:
            try:
                await self.client.xack(stream, WORKERS_GROUP, entry_id)
                return
            except Exception as e:
                if not is_transient(e):
                    log.error(
                        "acknowledging job entry %s of %s failed: %s: %s; the job is finished "
                        "but stays pending (check that the Redis user may XACK, and the "
                        "stream's type); its slot is freed",
                        entry_id,
                        stream,
                        type(e).__name__,
                        e,
                    )
                    return
                attempt += 1
                if attempt == 1:
                    log.warning(
                        "acknowledging job entry %s failed, retrying: %s: %s",
                        entry_id,
                        type(e).__name__,
                        e,
                    )
                await asyncio.sleep(retry_delay_s(attempt, base_s=0.1, cap_s=2.0))

    # -- stopping ----------------------------------------------------------------------------

    async def _finish_running(self) -> None:
        tasks = [r.task for r in self.running.values() if r.task is not None]
        if tasks:
            log.info(
                "waiting up to %.0fs for %d running job(s)",
                self.settings.worker_stop_grace_s,
                len(tasks),
            )
            _, late = await asyncio.wait(tasks, timeout=self.settings.worker_stop_grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        try:
            await asyncio.wait_for(self.emitter.idle(), self.settings.worker_stop_grace_s)
        except TimeoutError:
            log.error(
                "%d event(s) could not be written before stopping; their jobs stay "
                "pending and will be claimed and resumed",
                self.emitter.queued,
            )

    async def _hand_back(self, running: _Running) -> None:
        """Give a cancelled job back so another worker claims it now, not after the timeout."""
        running.handed_back = True
        idle_ms = int(self.settings.job_visibility_s * 1000) + 1
        try:
            if running.writer is not None:
                with suppress(EmitError):
                    await asyncio.wait_for(
                        running.writer.flushed(), self.settings.worker_stop_grace_s
                    )
            pipe = self.client.pipeline(transaction=False)
            pipe.hincrby(self.keys.meta(running.job), "attempts", -1)
            pipe.xclaim(
                running.stream,
                WORKERS_GROUP,
                self.consumer,
                0,
                [running.entry_id],
                idle=idle_ms,
                justid=True,
            )
            await pipe.execute()
            log.info("handed job %s back", running.job, extra={"job": running.job})
        except Exception as e:
            log.warning(
                "could not hand job %s back (it will be claimed after %.0fs): %s",
                running.job,
                self.settings.job_visibility_s,
                e,
            )


async def run_worker(
    settings: Settings, handlers: dict[str, Handler], concurrency: int, metrics_port: int = 0
) -> None:
    """Entry point: run a worker until SIGTERM or SIGINT."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(settings, handlers, concurrency=concurrency)
    if metrics_port:
        from prometheus_client import start_http_server

        from service.metrics import registry_with

        start_http_server(metrics_port, registry=registry_with(worker.collector()))
        log.info("worker metrics on :%d/metrics", metrics_port)
    freeze_what_startup_made()
    async with releasing_free_memory():
        await worker.run(stop)
