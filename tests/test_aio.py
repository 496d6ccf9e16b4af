"""Asyncio helpers: stopping tasks that swallow a cancellation (as a racing asyncio.wait_for
can on 3.11), and running a coroutine eagerly (what the outbox relies on to send without a task
per frame)."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest

from service.aio import Continue, run_eagerly, stop_tasks

T = TypeVar("T")


async def test_a_task_that_swallows_one_cancel_is_still_stopped() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed < 2:
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await stop_tasks([task], timeout_s=5)
    assert task.cancelled()
    assert swallowed == 2


async def test_a_coroutine_that_never_waits_finishes_in_the_callers_step() -> None:
    done: list[int] = []

    async def send() -> None:
        done.append(1)

    assert run_eagerly(send()) is None
    assert done == [1]


async def test_a_coroutine_that_waits_goes_on_in_a_task_with_its_result() -> None:
    gate = asyncio.Event()
    steps: list[str] = []

    async def send() -> str:
        steps.append("started")
        await gate.wait()
        steps.append("resumed")
        await asyncio.sleep(0)  # a second suspension, of another kind (a bare yield)
        return "sent"

    pending = run_eagerly(send())
    assert pending is not None and steps == ["started"]
    task = asyncio.create_task(_await(pending))
    await asyncio.sleep(0)
    assert not task.done()
    gate.set()
    assert await asyncio.wait_for(task, 5) == "sent"
    assert steps == ["started", "resumed"]


async def _await(pending: Continue[T]) -> T:
    return await pending


async def test_cancelling_the_task_reaches_the_waiting_coroutine() -> None:
    cleaned_up = asyncio.Event()

    async def send() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    pending = run_eagerly(send())
    assert pending is not None
    task = asyncio.create_task(_await(pending))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned_up.is_set()


async def test_an_error_before_the_first_wait_is_raised_to_the_caller() -> None:
    async def send() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        run_eagerly(send())
