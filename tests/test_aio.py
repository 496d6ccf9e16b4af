"""Stopping tasks that swallow a cancellation (as a racing asyncio.wait_for can on 3.11)."""

from __future__ import annotations

import asyncio

from service.aio import stop_tasks


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
