"""`Producer`: the `AsyncProducer` for synchronous code (Celery, RQ and Dramatiq tasks, scripts).

It runs an `AsyncProducer` on an event loop in a thread of its own, so both share one
implementation. `emit` does not wait for that loop: it serialises the data in the caller's
thread, queues it on the job's feed and returns; the loop writes the feed in order, through
the pipelined emitter. The caller waits only when a job has more than `FEED_MAX_BYTES`
queued, and at `done`, `fail`, `flush` and the end of the `with` block.

The loop thread starts at first use and again in a forked child (a Celery prefork worker
forks after importing the tasks module), so a `Producer()` made at import time is safe.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar

from service.config import Settings
from service.model import EventKind
from service.producer.async_producer import (
    FLUSH_TIMEOUT_S,
    OPEN_WAIT_S,
    AsyncJob,
    AsyncProducer,
    _json,
    producer_settings,
    require_producer_key,
)
from service.publisher import EmitError, JobFinished

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bytes one job may have queued on its feed before `emit` waits for the loop to catch up.
FEED_MAX_BYTES = 8 * 1024 * 1024


class _LoopThread:
    """An event loop running in a daemon thread, and a way to run coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="resultcast-producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class _Feed:
    """One job's queue from the caller's thread to the loop, written strictly in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[Callable[[], Awaitable[Any]], int]] = deque()
        self._bytes = 0
        self._draining = False
        self._changed = threading.Condition()

    def put(self, step: Callable[[], Awaitable[Any]], size: int = 0) -> None:
        with self._changed:
            while self._bytes >= FEED_MAX_BYTES:
                self._changed.wait()
            self._items.append((step, size))
            self._bytes += size
            start = not self._draining
            self._draining = True
        if start:
            self._loop.call_soon_threadsafe(self._start)

    def call(self, make: Callable[[], Awaitable[T]], timeout_s: float | None = None) -> T:
        """Run `make()` on the loop after everything put before it; wait for its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def step() -> None:
            try:
                future.set_result(await make())
            except BaseException as e:  # handed to the caller's thread
                future.set_exception(e)

        self.put(step)
        return future.result(timeout_s)

    def _start(self) -> None:
        self._loop.create_task(self._drain(), name="producer feed")

    async def _drain(self) -> None:
        while True:
            with self._changed:
                if not self._items:
                    self._draining = False
                    return
                step, size = self._items.popleft()
            try:
                await step()
            except EmitError:
                pass  # the job's writer keeps the error: the caller's next call raises it
            except Exception:
                log.exception("a producer step failed")
            with self._changed:
                self._bytes -= size
                self._changed.notify_all()


class Job:
    """One open job, for synchronous code: `emit`, then `done` or `fail`."""

    def __init__(self, handle: AsyncJob, feed: _Feed) -> None:
        self._handle = handle
        self._feed = feed
        self.job = handle.job
        self.attempt = handle.attempt
        self.resumed_after = handle.resumed_after
        self.finished = handle.finished
        self._terminal = handle.finished

    def _check(self) -> None:
        if self._terminal:
            raise JobFinished(f"job {self.job} already has its terminal event")
        if (error := self._handle._writer.error) is not None:
            raise error

    def emit(self, data: Any) -> None:
        """Queue a `data` event and return at once (it is written in order, pipelined)."""
        self._check()
        payload = _json(data)
        handle = self._handle
        self._feed.put(lambda: handle.emit_json(payload), len(payload))

    def done(self, data: Any = None, *, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """End the job with `done`; returns once it and every event before it are written."""
        self._end(EventKind.DONE, data, timeout_s)

    def fail(self, message: str, *, timeout_s: float = FLUSH_TIMEOUT_S, **details: Any) -> None:
        """End the job with `failed` {"message": message, ...}; returns once written."""
        self._end(EventKind.FAILED, {"message": message, **details}, timeout_s)

    def _end(self, kind: EventKind, data: Any, timeout_s: float) -> None:
        self._check()
        _json(data)  # refused here, in the caller's thread, if it cannot be serialised
        self._terminal = True
        handle = self._handle
        end = handle.done(data) if kind is EventKind.DONE else handle.fail(**data)
        self._feed.call(lambda: end, timeout_s + 1)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until every event emitted so far is written (`NotWritten` after timeout_s)."""
        handle = self._handle
        self._feed.call(lambda: handle.flush(timeout_s), timeout_s + 1)


class _Opened:
    """`with producer.open(job) as j:` for synchronous code."""

    def __init__(self, producer: Producer, job: str, wait_s: float) -> None:
        self._producer = producer
        self._job = job
        self._wait_s = wait_s
        self._context: AbstractAsyncContextManager[AsyncJob] | None = None
        self._feed: _Feed | None = None

    def __enter__(self) -> Job:
        thread, producer = self._producer._running()
        self._context = producer.open(self._job, wait_s=self._wait_s)
        handle = thread.run(self._context.__aenter__(), self._wait_s + FLUSH_TIMEOUT_S)
        self._feed = _Feed(thread.loop)
        return Job(handle, self._feed)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._context is not None and self._feed is not None
        context = self._context
        # After everything emitted in the block: the async exit flushes and releases.
        self._feed.call(lambda: context.__aexit__(kind, error, trace), FLUSH_TIMEOUT_S + 5)


class Producer:
    """Create jobs for delivery and write their events, from synchronous code. Settings not
    given come from the environment (`REDIS_URL`, `SECRET_KEY`, ...)."""

    def __init__(
        self,
        redis_url: str | None = None,
        secret_key: str | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or producer_settings(redis_url, secret_key)
        require_producer_key(self.settings)
        self._lock = threading.Lock()
        self._thread: _LoopThread | None = None
        self._producer: AsyncProducer | None = None

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _running(self) -> tuple[_LoopThread, AsyncProducer]:
        with self._lock:
            if self._thread is None or self._thread.pid != os.getpid() or not self._producer:
                # First use, or a forked child: the parent's thread and sockets are not ours.
                self._thread = _LoopThread()
                self._producer = AsyncProducer(settings=self.settings)
                atexit.register(self.close)
            return self._thread, self._producer

    def create(self, kind: str = "job") -> tuple[str, str]:
        """A new job for delivery only: its id and the token a client watches it with."""
        thread, producer = self._running()
        return thread.run(producer.create(kind), FLUSH_TIMEOUT_S)

    def token(self, job: str) -> str:
        """The watch token of `job`."""
        return self._running()[1].token(job)

    def open(self, job: str, *, wait_s: float = OPEN_WAIT_S) -> _Opened:
        """`with producer.open(job) as j:` writes `job`'s events (see `AsyncProducer.open`)."""
        return _Opened(self, job, wait_s)

    def close(self) -> None:
        """Write what is queued (up to FLUSH_TIMEOUT_S), close connections, stop the thread."""
        with self._lock:
            thread, producer = self._thread, self._producer
            self._thread = self._producer = None
        if thread is None or producer is None or thread.pid != os.getpid():
            return
        atexit.unregister(self.close)
        try:
            thread.run(producer.aclose(), FLUSH_TIMEOUT_S + 5)
        finally:
            thread.stop()
