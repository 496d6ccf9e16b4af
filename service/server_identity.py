"""Which Redis server a process reaches, as its connections see it when they connect.

A restart, a promoted replica or a full resync gives the server a new run id or replication
id; state derived from the old server (what a gateway already delivered) may no longer match
what the new one holds. `redis_client` reports each new connection's ids here; the hub
compares generations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


def as_text(value: bytes | None) -> str | None:
    """A run or replication id as text, for reports (`/admin/stats`)."""
    return None if value is None else value.decode(errors="replace")


@dataclass
class ServerIdentity:
    """The Redis server this process reaches, as its connections last saw it.

    `generation` goes up each time a new connection finds a run id or replication id other
    than the one seen before; whoever holds state derived from the old server compares it.
    A server that refuses `INFO` (an ACL without it) leaves the identity unknown: then only
    the position checks of catch-up detect lost data.
    """

    run_id: bytes | None = None
    replication_id: bytes | None = None
    generation: int = 0
    _warned: bool = False

    def observe(self, run_id: bytes | None, replication_id: bytes | None) -> None:
        if run_id is None:
            return
        if self.run_id is not None and (run_id, replication_id) != (
            self.run_id,
            self.replication_id,
        ):
            self.generation += 1
            log.warning(
                "Redis is now a different server, or its data was replaced (run id %s..., "
                "replication id %s...); watches will be checked against its data",
                run_id[:8].decode(errors="replace"),
                (replication_id or b"?")[:8].decode(errors="replace"),
            )
        self.run_id, self.replication_id = run_id, replication_id

    def refused(self, error: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "cannot read the Redis server's run id (%s); failover detection "
                "falls back to position checks",
                error,
            )


def info_field(info: bytes, name: bytes) -> bytes | None:
    for line in info.splitlines():
        key, sep, value = line.partition(b":")
        if sep and key == name:
            return value.strip()
    return None
