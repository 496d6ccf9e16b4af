"""Stream maintenance, run by exactly one process of a deployment: the lease holder.

The seed ran maintenance on a process named `worker-0`, so it ran nowhere when that process
was down and twice when two were misnamed. Here every worker competes for a short Redis lease
(`SET NX PX`, renewed by its holder); whoever holds it does the work, and when it dies the
lease expires and another process takes over.

The only thing to trim is the jobs stream: result streams and meta hashes expire on their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as redis

from service.keys import Keys
from service.lease import Lease
from service.redis_client import redis_errors

log = logging.getLogger(__name__)


def _next_id(stream_id: str) -> str:
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def trim_acknowledged(client: redis.Redis, stream: str) -> int:
    """Delete the entries of `stream` that every consumer group has acknowledged."""
    groups = await client.xinfo_groups(stream)
    if not groups:
        return 0
    floors: list[str] = []
    for group in groups:
        name = group["name"]
        if int(group["pending"]):
            summary = await client.xpending(stream, name)
            floors.append(_as_str(summary["min"]))
        else:
            floors.append(_next_id(_as_str(group["last-delivered-id"])))
    floor = min(floors, key=_id_key)
    return int(await client.xtrim(stream, minid=floor, approximate=False))


async def sample_queue(client: redis.Redis, stream: str) -> tuple[int, dict[str, int], float]:
    """(jobs waiting, pending per group, oldest pending age in s) of the jobs stream.

    Run right after `trim_acknowledged`: what is left in the stream is either pending (taken,
    not acknowledged) or waiting, so waiting = length - pending. (XINFO's `lag` is not used: it
    becomes unknown once entries are deleted.)
    """
    length = int(await client.xlen(stream))
    groups = await client.xinfo_groups(stream)
    pending: dict[str, int] = {}
    oldest_ms: int | None = None
    for group in groups:
        name = _as_str(group["name"])
        pending[name] = int(group["pending"])
        if pending[name]:
            summary = await client.xpending(stream, group["name"])
            ms = _id_key(_as_str(summary["min"]))[0]
            oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
    waiting = max(0, length - max(pending.values(), default=0))
    age_s = max(0.0, time.time() - oldest_ms / 1000) if oldest_ms is not None else 0.0
    return waiting, pending, age_s


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _hold(lease: Lease) -> bool:
    """Renew the lease if held, else try to take it; whether this process holds it now."""
    if lease.held and not await lease.renew():
        log.warning("lease %s was lost (expired while this process stalled)", lease.key)
    if not lease.held and await lease.take():
        log.info("took lease %s", lease.key)
    return lease.held


async def run_maintenance(
    client: redis.Redis,
    keys: Keys,
    *,
    holder: str,
    lease_ttl_s: float,
    interval_s: float,
    extra: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Hold the maintenance lease when possible and do the work while holding it; never returns."""
    lease = Lease(client, keys.maintenance_lease, lease_ttl_s, holder)
    renew_every_s = lease_ttl_s / 3
    next_work = 0.0
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                with redis_errors("maintenance"):
                    if await _hold(lease) and loop.time() >= next_work:
                        for stream in keys.job_stream_keys:
                            trimmed = await trim_acknowledged(client, stream)
                            if trimmed:
                                log.info("maintenance trimmed %d acknowledged jobs", trimmed)
                        if extra is not None:
                            await extra()
                        next_work = loop.time() + interval_s
            except Exception as e:
                # The loop must outlive any failure: log one line and try again next round.
                log.warning("maintenance round failed: %s", e)
                lease.held = False
            await asyncio.sleep(min(renew_every_s, interval_s))
    finally:
        try:
            await asyncio.shield(lease.release())
        except Exception as e:
            log.debug("could not release the maintenance lease: %s", e)
