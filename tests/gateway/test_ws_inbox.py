"""The WebSocket protocol's inbox (uvicorn's receive queue without asyncio.Queue): messages
in order, the reader woken by the next one, nothing lost to a cancelled read."""

from __future__ import annotations

import asyncio

import pytest

from service.gateway.ws_protocol import Inbox


async def test_messages_come_out_in_order_and_wake_a_waiting_reader() -> None:
    inbox = Inbox(asyncio.get_running_loop())
    assert inbox.empty()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert not inbox.empty()
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    assert inbox.empty()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)  # the reader waits: nothing is there
    assert not reader.done()
    inbox.put_nowait(3)
    assert await asyncio.wait_for(reader, 5) == 3


async def test_a_cancelled_read_loses_nothing() -> None:
    inbox = Inbox(asyncio.get_running_loop())
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("kept")  # wakes the reader, which is cancelled before it runs
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert await asyncio.wait_for(inbox.get(), 5) == "kept"


async def test_a_second_reader_is_refused() -> None:
    inbox = Inbox(asyncio.get_running_loop())
    first = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="two readers"):
        await inbox.get()
    inbox.put_nowait("for the first")
    assert await asyncio.wait_for(first, 5) == "for the first"
