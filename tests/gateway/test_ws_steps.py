"""The fast path's batching: a socket's frames after its first in one event-loop step go out
together when the step ends, and nothing written meanwhile overtakes them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from service.gateway.ws_protocol import Steps, Writes, text_frame
from tests.conftest import wait_for


@pytest.fixture
async def connection() -> AsyncIterator[tuple[Writes, socket.socket]]:
    """A real transport over a socket pair, and the far end to read from."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    yield Writes(transport), theirs
    transport.close()
    theirs.close()


def holding(writes: Writes, *frames: bytes) -> Steps:
    """A step under way in which `frames` were held back on `writes`, as the fast path does."""
    steps = Steps(asyncio.get_running_loop())
    steps.seen()
    steps.hold(writes)
    writes.held += frames
    return steps


def received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except BlockingIOError:
        return b""


async def test_held_frames_go_out_at_the_end_of_the_step_in_order(
    connection: tuple[Writes, socket.socket],
) -> None:
    writes, far = connection
    writes.write(b"A")
    steps = holding(writes, b"B", b"C")
    assert received(far) == b"A"  # the held ones wait for the step's end
    first_step = steps.step
    await asyncio.sleep(0)  # the step ends
    assert steps.step == first_step + 1
    got = bytearray()

    def arrived() -> bool:
        got.extend(received(far))
        return len(got) >= 2

    await wait_for(arrived, what="the held frames")
    assert got == b"BC" and not writes.held


async def test_any_other_write_sends_the_held_frames_first(
    connection: tuple[Writes, socket.socket],
) -> None:
    writes, far = connection
    holding(writes, text_frame(b"1"), text_frame(b"2"))
    writes.write(b"pong")  # what uvicorn writes itself: a pong, a close, a fallback send
    assert received(far) == text_frame(b"1") + text_frame(b"2") + b"pong"
    await asyncio.sleep(0)
    assert received(far) == b""  # nothing sent twice


async def test_held_frames_of_a_closed_connection_are_dropped(
    connection: tuple[Writes, socket.socket],
) -> None:
    writes, _far = connection
    holding(writes, b"late")
    writes.abort()
    await asyncio.sleep(0)
    assert not writes.held
