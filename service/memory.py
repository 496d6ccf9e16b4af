"""Giving memory that was freed back to the operating system, now and then.

CPython frees into the C allocator, and glibc's malloc returns freed memory to the system
only from the top of its heap: after a burst (an outage's retries and queued events, a
reconnection storm, a peak of sockets) the holes the burst left stay in the process for
good, though nothing uses them. Measured: a worker with 300 jobs running through eight Redis
restarts went from 61 to 159 MiB with its Python objects back where they were; one
`malloc_trim` took it to 42 MiB, in 3 to 6 ms. Ruby's garbage collector calls it for the
same reason. The gateway and the worker call it every TRIM_INTERVAL_S; a library user's
process (the producer) is left to its owner. Elsewhere (musl, macOS) there is nothing to
call and this does nothing.

Large blocks (an HTTP body of a large job, a large event's frame, a catch-up page) are
another matter: once one such block has been freed, glibc serves the next ones from the heap
too (its mmap threshold rises to the largest block freed, up to 32 MiB), so 20 clients that
never read a 4 MB answer left a gateway 12 to 56 MiB above its baseline after they had gone,
until the next trim. With the threshold fixed at LARGE_BLOCK_BYTES every such block has pages
of its own, given back the moment it is freed: measured, 0.4 to 2.9 MiB left, for 0.1 s more
CPU over the 80 MB.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache

from service.aio import stop_tasks

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 30.0
LARGE_BLOCK_BYTES = 256 * 2**10
M_MMAP_THRESHOLD = -3  # mallopt's parameter, from glibc's malloc.h
# Less than this given back is the allocator's ordinary slack, not worth a line at INFO.
NOTABLE_BYTES = 16 * 2**20


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    glibc = hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")
    return libc if glibc else None


def _malloc_trim() -> Callable[[int], int] | None:
    libc = _glibc()
    return None if libc is None else libc.malloc_trim


def give_back_large_blocks_when_freed() -> bool:
    """Fix glibc's mmap threshold at LARGE_BLOCK_BYTES (see above), unless the operator set
    MALLOC_MMAP_THRESHOLD_ already; whether it was set."""
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES))


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), None where /proc does not say."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_free_memory() -> int | None:
    """Return the C heap's free memory to the system; how many bytes of RSS that gave back
    (None where it cannot be done or measured)."""
    trim = _malloc_trim()
    if trim is None:
        return None
    before = resident_bytes()
    started = time.perf_counter()
    trim(0)
    after = resident_bytes()
    if before is None or after is None:
        return None
    given = before - after
    log.log(
        logging.INFO if given >= NOTABLE_BYTES else logging.DEBUG,
        "gave %.1f MiB of freed memory back to the system (%.1f ms)",
        given / 2**20,
        (time.perf_counter() - started) * 1000,
    )
    return given


@asynccontextmanager
async def releasing_free_memory() -> AsyncIterator[None]:
    """For a process's life: large blocks given back when freed, and
    `release_free_memory_every` in a task of its own."""
    give_back_large_blocks_when_freed()
    task = asyncio.create_task(release_free_memory_every(), name="memory")
    try:
        yield
    finally:
        await stop_tasks([task])


async def release_free_memory_every(interval_s: float = TRIM_INTERVAL_S) -> None:
    """Until cancelled: `release_free_memory` every `interval_s`."""
    if _malloc_trim() is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        release_free_memory()
