"""`AsyncProducer`: create jobs and write their events from any asyncio program.

It writes through the same `Emitter` as resultcast's workers (the same atomic emit script,
frame, ids, TTLs and limits), so emits are queued and pipelined, not a round trip each, and
events that cannot be written while Redis is down are kept in order and retried.

One writer per job at a time: `open` takes a lease on the job (`<prefix>:{<job>}:writer`),
renewed while it is open, so a retry that starts while an earlier attempt still writes waits
for it (or is refused with `JobBusy`) instead of interleaving with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import orjson
from redis.exceptions import RedisError

from service import tokens
from service.config import ConfigError, Settings
from service.keys import Keys
from service.lease import Lease
from service.logs import redact
from service.model import EventKind, JobStatus, new_job_id
from service.producer.errors import JobBusy, NotWritten, RedisUnreachable
from service.publisher import Emitter, JobFinished, JobLost, JobWriter, emit_limits, now_ms
from service.redis_client import RedisFactory, retrying
from service.scripts import CREATE_JOB, START_JOB

log = logging.getLogger(__name__)

# How long a writer's lease lasts unless renewed; renewed every third of it while open. A
# writer that died holds its job at most this long.
LEASE_S = 10.0
# How long `open` waits for another writer of the job to finish by default.
OPEN_WAIT_S = 15.0
# How long closing a job waits for its events to be written before it says they were not.
FLUSH_TIMEOUT_S = 30.0


def producer_settings(redis_url: str | None, secret_key: str | None) -> Settings:
    """Settings from the environment, with the URL and key given here taking precedence."""
    overrides: dict[str, Any] = {}
    if redis_url is not None:
        overrides["redis_url"] = redis_url
    if secret_key is not None:
        overrides["secret_key"] = secret_key
    settings = Settings.from_env(**overrides)
    require_producer_key(settings)
    return settings


def require_producer_key(settings: Settings) -> None:
    """A producer signs the tokens the gateways check, so it needs their key: say where the
    dev stack keeps it, since that is where a first producer usually runs against."""
    if not settings.secret_key:
        raise ConfigError(
            "SECRET_KEY: required; a producer signs the watch tokens that your gateways check, "
            "so it needs the same key (secret_key=..., or the environment). Against `python -m "
            'service dev`: export SECRET_KEY="$(cat .data/dev-secret-key)" and REDIS_URL=<the '
            "Redis URL dev prints>, both printed by dev as export lines when it starts"
        )


class AsyncJob:
    """One open job: `emit` its data events, then `done` or `fail`."""

    def __init__(self, writer: JobWriter, attempt: int, status: str) -> None:
        self._writer = writer
        self.job = writer.job
        self.attempt = attempt
        # Events an earlier attempt already wrote: skip that many to go on without duplicates.
        self.resumed_after = writer.last_seq
        self.finished = status in (JobStatus.DONE, JobStatus.FAILED)
        self._terminal = self.finished

    def _check(self) -> None:
        if self._terminal:
            raise JobFinished(f"job {self.job} already has its terminal event")

    async def emit(self, data: Any) -> int:
        """Queue a `data` event; returns its seq. Waits only while too much is queued."""
        self._check()
        return await self._writer.emit_json(EventKind.DATA, _json(data))

    async def emit_json(self, payload: bytes) -> int:
        """`emit` of data already serialised to JSON text (trusted to be valid JSON)."""
        self._check()
        return await self._writer.emit_json(EventKind.DATA, payload)

    async def done(self, data: Any = None) -> None:
        """End the job with `done` (its data: the result); waits until it is written."""
        await self._end(EventKind.DONE, data)

    async def fail(self, message: str, **details: Any) -> None:
        """End the job with `failed` {"message": message, ...details}; waits until written."""
        await self._end(EventKind.FAILED, {"message": message, **details})

    async def _end(self, kind: EventKind, data: Any) -> None:
        self._check()
        payload = _json(data)
        self._writer.reopen_after_limit()  # a job stopped by a limit may still be ended
        self._terminal = True
        await self._writer.emit_json(kind, payload)
        await self.flush()

    async def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until every event emitted so far is written; `NotWritten` if that takes
        longer than `timeout_s` (they stay queued, and are retried while the producer lives)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._writer.flushed()
        except TimeoutError:
            waiting = self._writer.last_seq - self._writer.durable_seq
            raise NotWritten(
                f"{waiting} event(s) of job {self.job} not written after {timeout_s:g}s "
                "(is Redis reachable?)"
            ) from None


class AsyncProducer:
    """Create jobs for delivery and write their events. Settings not given come from the
    same environment variables as the rest of resultcast (`REDIS_URL`, `SECRET_KEY`, ...)."""

    def __init__(
        self,
        redis_url: str | None = None,
        secret_key: str | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or producer_settings(redis_url, secret_key)
        require_producer_key(self.settings)
        self.keys = Keys(self.settings.key_prefix, self.settings.job_streams)
        self._factory = RedisFactory(self.settings, "producer")
        self._client = self._factory.commands()
        self._emitter = Emitter(
            self._client,
            self.keys,
            ttl_s=self.settings.result_ttl_s,
            limits=emit_limits(self.settings),
        )
        self._flusher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def create(self, kind: str = "job") -> tuple[str, str]:
        """A new job for delivery only (no resultcast worker runs it): its id and the token
        a client watches it with."""
        job = new_job_id()
        ttl_ms = self.settings.result_ttl_s * 1000
        meta = [self.keys.meta(job)]
        with self._reaching_redis("creating a job"):
            await retrying(lambda: CREATE_JOB(self._client, meta, [kind, now_ms(), ttl_ms]))
        return job, tokens.sign(job, self.settings.secret_key)

    @contextmanager
    def _reaching_redis(self, what: str) -> Iterator[None]:
        """Redis that does not answer, as the producer's own retryable error naming it."""
        try:
            yield
        except (RedisError, OSError) as e:
            url = redact(self.settings.redis_url)
            raise RedisUnreachable(
                f"{what}: cannot reach Redis at {url}: {type(e).__name__}: {e}"
            ) from e

    def token(self, job: str) -> str:
        """The watch token of `job` (for a job created elsewhere, e.g. by `POST /jobs`)."""
        return tokens.sign(job, self.settings.secret_key)

    @asynccontextmanager
    async def open(self, job: str, *, wait_s: float = OPEN_WAIT_S) -> AsyncIterator[AsyncJob]:
        """Write `job`'s events. Opening it again later (a retry) goes on after what was
        written (`resumed_after`); while another writer has it open, waits up to `wait_s`,
        then raises `JobBusy`. Leaving the block writes what was emitted before it returns."""
        with self._reaching_redis(f"opening job {job}"):
            lease = await self._take_lease(job, wait_s)
        renewing = asyncio.create_task(self._renew(job, lease), name=f"lease {job}")
        try:
            with self._reaching_redis(f"opening job {job}"):
                attempt, last_seq, status = await retrying(
                    lambda: START_JOB(self._client, [self.keys.meta(job)], [now_ms()])
                )
            status = status.decode() if isinstance(status, bytes) else str(status)
            if not status:
                raise JobLost(f"job {job} is unknown (never created, or its results expired)")
            self._start_flusher()
            handle = AsyncJob(self._emitter.writer(job, int(last_seq)), int(attempt), status)

            def lease_ended(task: asyncio.Task[None]) -> None:
                if not task.cancelled():  # it ends by itself only when the lease was lost
                    handle._writer._fail(_lease_lost(job))

            renewing.add_done_callback(lease_ended)
            failed = False
            try:
                yield handle
            except BaseException:
                failed = True
                raise
            finally:
                await self._flush_on_exit(handle, failed)
        finally:
            renewing.cancel()
            with suppress(asyncio.CancelledError):
                await renewing
            await self._release_lease(job, lease)

    async def _flush_on_exit(self, handle: AsyncJob, failed: bool) -> None:
        if not failed:
            await handle.flush()
            return
        # The block raised (a task that will be retried): write what it emitted, so that
        # the retry's `resumed_after` counts it, without hiding the block's own error.
        try:
            await handle.flush()
        except Exception as e:
            log.warning("job %s: events emitted before an error not written: %s", handle.job, e)

    async def aclose(self) -> None:
        """Write what is queued (up to FLUSH_TIMEOUT_S), then close the connections."""
        if self._flusher is not None:
            try:
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    await self._emitter.idle()
            except TimeoutError:
                log.error(
                    "producer closed with %d event(s) not written after %gs (Redis unreachable)",
                    self._emitter.queued,
                    FLUSH_TIMEOUT_S,
                )
            self._flusher.cancel()
            with suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self._client.aclose()

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._emitter.run(), name="producer flusher")

    async def _take_lease(self, job: str, wait_s: float) -> Lease:
        lease = Lease(self._client, self.keys.writer(job), LEASE_S)
        await lease.take_within(
            wait_s, lambda: JobBusy(f"job {job} is open in another writer (waited {wait_s:g}s)")
        )
        return lease

    async def _renew(self, job: str, lease: Lease) -> None:
        """Keep the lease while the job is open; returns (ending the job's writes) if it
        was lost: another writer took the job after this one could not renew in time."""
        while True:
            await asyncio.sleep(LEASE_S / 3)
            try:
                if not await lease.renew():
                    log.error("job %s: this writer's lease was lost; it writes no more", job)
                    return
            except Exception as e:  # Redis down: the lease may outlive it; try again
                log.warning("job %s: renewing the writer's lease failed: %s", job, e)

    async def _release_lease(self, job: str, lease: Lease) -> None:
        try:
            await lease.release()
        except Exception as e:  # it expires on its own
            log.warning("job %s: releasing the writer's lease failed: %s", job, e)


def _lease_lost(job: str) -> JobBusy:
    return JobBusy(f"job {job}: this writer's lease was lost to another writer")


def _json(data: Any) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError as e:
        raise TypeError(f"event data is not JSON-serialisable: {e}") from None
