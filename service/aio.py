"""Asyncio helpers: stopping background tasks reliably; running a coroutine eagerly.

A single `Task.cancel()` is not always enough on Python 3.11: `asyncio.wait_for` (used inside
redis-py's connection pool) can swallow a cancellation that races with the awaited result, and
a loop that swallowed it goes on forever. So cancellation is repeated until the tasks end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Generator, Iterable
from typing import Any, Generic, TypeVar, cast

log = logging.getLogger(__name__)

RECANCEL_EVERY_S = 0.2
T = TypeVar("T")


async def stop_tasks(tasks: Iterable[asyncio.Task[object]], timeout_s: float = 10.0) -> None:
    """Cancel `tasks` and wait for them, cancelling again until they end or time runs out."""
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY_S)
    for task in pending:
        log.error("task %s did not stop within %.0fs", task.get_name(), timeout_s)


class Continue(Generic[T]):
    """Awaiting this continues `coro`, which already ran up to its first suspension (where it
    yielded `pending`), in the awaiting task: what Python 3.12's eager tasks do, for 3.11."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, T], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, T]:
        coro, value = self._coro, self._pending
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # a cancellation: the coroutine decides what it means
                try:
                    value = coro.throw(e)
                except StopIteration as stop:
                    return cast(T, stop.value)
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return cast(T, stop.value)


def run_eagerly(coro: Coroutine[Any, Any, Any]) -> Continue[Any] | None:
    """Run `coro` now, up to its first suspension. None: it finished without suspending;
    otherwise what to await (in a task) to finish it. Its exceptions are raised here.

    The gateway's hot path: most sends complete without suspending, and a task per send
    would cost more than the send itself.
    """
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    return Continue(coro, pending)
