"""The one retry loop: what it logs, whom it tells, and when it backs off."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from service.delivery.supervise import restart_forever
from service.model import RedisUnavailable, ServiceError


async def _supervised(
    fail: Callable[[int], None], **options: Any
) -> tuple[asyncio.Task[None], asyncio.Queue[int]]:
    """A task that fails as `fail(attempt)` says, under `restart_forever` with `options`."""
    attempts: asyncio.Queue[int] = asyncio.Queue()
    count = 0

    async def run() -> None:
        nonlocal count
        count += 1
        attempts.put_nowait(count)
        fail(count)

    task = asyncio.create_task(restart_forever("the test loop", run, **options))
    return task, attempts


async def _attempts(attempts: asyncio.Queue[int], n: int) -> None:
    for _ in range(n):
        await asyncio.wait_for(attempts.get(), 10)


def _lost(_attempt: int) -> None:
    raise RedisConnectionError("Connection refused")


async def test_lost_redis_is_one_warning_line_and_the_task_starts_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crashes: list[BaseException] = []
    task, attempts = await _supervised(_lost, on_crash=crashes.append)
    await _attempts(attempts, 3)
    task.cancel()
    records = [r for r in caplog.records if r.name == "service.delivery.supervise"]
    assert records and all(r.levelno == logging.WARNING for r in records)
    assert all(r.exc_info is None for r in records), "an expected outage has no traceback"
    assert "the test loop lost Redis: ConnectionError: Connection refused" in records[0].message
    assert crashes == [], "an outage is not a crash"


@pytest.mark.logs_errors
async def test_a_bug_is_logged_with_its_traceback_and_reported_as_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crashes: list[BaseException] = []

    def bug(_attempt: int) -> None:
        raise KeyError("oops")

    task, attempts = await _supervised(bug, on_crash=crashes.append)
    await _attempts(attempts, 2)
    task.cancel()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].exc_info is not None
    assert "the test loop failed unexpectedly" in errors[0].message
    assert isinstance(crashes[0], KeyError)


async def test_on_lost_hears_of_an_outage_instead_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    told: list[ServiceError] = []
    task, attempts = await _supervised(_lost, on_lost=told.append)
    await _attempts(attempts, 2)
    task.cancel()
    assert told and isinstance(told[0], RedisUnavailable)
    assert not [r for r in caplog.records if r.name == "service.delivery.supervise"]


async def test_an_attempt_that_worked_is_retried_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After an attempt that worked there is no back-off; after one that did not, the wait
    grows with every failure in a row."""
    waits: list[int] = []

    def delay(failures: int) -> float:
        waits.append(failures)
        return 0.0

    monkeypatch.setattr("service.delivery.supervise.reconnect_delay_s", delay)
    worked = {1: False, 2: False, 3: True, 4: False}
    current = 0

    def fail(attempt: int) -> None:
        nonlocal current
        current = attempt
        _lost(attempt)

    task, attempts = await _supervised(fail, worked=lambda: worked.get(current, False))
    await _attempts(attempts, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert waits[:3] == [1, 2, 1], "backed off 1, 2; none after the third; then starts over"
