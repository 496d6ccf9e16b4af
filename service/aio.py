"""Stopping background tasks reliably.

A single `Task.cancel()` is not always enough on Python 3.11: `asyncio.wait_for` (used inside
redis-py's connection pool) can swallow a cancellation that races with the awaited result, and
a loop that swallowed it goes on forever. So cancellation is repeated until the tasks end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

RECANCEL_EVERY_S = 0.2


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
