"""Freed memory goes back to the operating system, not only the top of the heap."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from service.aio import stop_tasks
from service.memory import (
    _malloc_trim,
    release_free_memory,
    release_free_memory_every,
    resident_bytes,
)
from tests.conftest import make_settings, wait_for
from tests.processes import migrated_redis, running_gateway

pytestmark = pytest.mark.skipif(
    _malloc_trim() is None or resident_bytes() is None, reason="needs glibc and /proc"
)

MIB = 2**20


def holes_in_the_heap() -> list[bytes]:
    """200 MiB in blocks of 2 KB (malloc's, not Python's small-object arenas), all freed but
    every 64th: holes between live blocks, which free() keeps (measured: RSS unchanged)."""
    blocks = [bytes(2000) for _ in range(100_000)]
    return blocks[::64]


def test_holes_left_in_the_heap_are_given_back(caplog: pytest.LogCaptureFixture) -> None:
    kept = holes_in_the_heap()
    with caplog.at_level(logging.INFO, logger="service.memory"):
        given = release_free_memory()
    assert given is not None and given > 100 * MIB, given
    assert "MiB of freed memory back to the system" in caplog.text
    assert len(kept) == 1563


async def test_given_back_now_and_then_without_being_asked() -> None:
    task = asyncio.create_task(release_free_memory_every(0.05))
    kept = holes_in_the_heap()
    before = resident_bytes()
    assert before is not None
    await wait_for(
        lambda: before - (resident_bytes() or before) > 100 * MIB, what="memory given back"
    )
    await stop_tasks([task])
    assert len(kept) == 1563


async def test_the_gateway_server_does_it(tmp_path: Path) -> None:
    async with migrated_redis(tmp_path) as (server, _):
        async with running_gateway(make_settings(server.url)):
            names = {task.get_name() for task in asyncio.all_tasks()}
            assert "memory" in names
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert "memory" not in names  # and stops with it
