"""Job kinds for benchmarks, loaded with `--handlers service.bench.handlers:HANDLERS`."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from service.handlers import Job


async def tick(job: Job) -> Any:
    """`n` events carrying their emit time in ns (`t_ns`), `interval_ms` apart.

    With `start_ns`, the first event waits for that wall-clock time plus an offset derived
    from the job id (spread over one interval), so many jobs tick evenly, not in lockstep.
    """
    n = int(job.payload.get("n", 1))
    interval_s = float(job.payload.get("interval_ms", 0)) / 1000
    if start_ns := job.payload.get("start_ns"):
        spread = int.from_bytes(hashlib.blake2b(job.id.encode(), digest_size=4).digest())
        start_s = start_ns / 1e9 + (spread % 10_000) / 10_000 * interval_s
        await asyncio.sleep(max(0.0, start_s - time.time()))
    for i in range(job.resumed_after + 1, n + 1):
        await job.emit({"i": i, "t_ns": time.time_ns()})
        if interval_s:
            await asyncio.sleep(interval_s)
        elif i % 256 == 0:
            await asyncio.sleep(0)
    return {"count": n, "t_ns": time.time_ns()}


HANDLERS = {"tick": tick}
