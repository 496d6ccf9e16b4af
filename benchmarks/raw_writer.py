"""Events written to Redis as raw pipelined commands, for the delivery benchmarks.

A client library would spend more per event than a gateway does and measure the writer
instead. What one event is differs per system: for resultcast what its emit script leaves
(stream entry, meta seq, notification); for a Pub/Sub-only peer just the PUBLISH.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from service.codec import ENTRY_FIELD, META_SEQ, event_frame
from service.keys import Keys
from service.model import EventKind, stream_id

KEYS = Keys()


def resp(*parts: bytes) -> bytes:
    """One Redis command in the wire protocol."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def frame(job: str, seq: int) -> bytes:
    """The event every system delivers: resultcast's frame, so clients count it alike."""
    return event_frame(seq, job, EventKind.DATA, time.time_ns() // 1_000_000, b"{}")


def resultcast_event(job: str, seq: int) -> bytes:
    """What resultcast's emit script leaves for one event: 4 reply lines (XADD's id is a bulk
    string, HSET's and PUBLISH's integers)."""
    f = frame(job, seq)
    return b"".join(
        (
            resp(b"XADD", KEYS.events(job).encode(), stream_id(seq).encode(), ENTRY_FIELD, f),
            resp(b"HSET", KEYS.meta(job).encode(), META_SEQ.encode(), b"%d" % seq),
            resp(b"PUBLISH", KEYS.channel(job).encode(), f),
        )
    )


RESULTCAST_LINES = 4

EventCommands = Callable[[str, int], bytes]


class RawWriter:
    """Writes batches of events over one connection and waits for every reply."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        commands: EventCommands = resultcast_event,
        lines_per_event: int = RESULTCAST_LINES,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._commands, self._lines_per_event = commands, lines_per_event
        self._lines = 0

    @classmethod
    async def connect(
        cls,
        url: str,
        commands: EventCommands = resultcast_event,
        lines_per_event: int = RESULTCAST_LINES,
    ) -> RawWriter:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, commands, lines_per_event)

    async def write(self, events: list[tuple[str, int]]) -> None:
        """Write these (job, seq) events in one pipeline; return once Redis has answered."""
        self._writer.write(b"".join(self._commands(job, seq) for job, seq in events))
        expected = self._lines + len(events) * self._lines_per_event
        while self._lines < expected:
            chunk = await self._reader.read(1 << 16)
            if not chunk:
                raise ConnectionError("Redis closed the benchmark's connection")
            if b"\r\n-" in chunk or chunk.startswith(b"-"):
                raise RuntimeError(f"Redis refused a write: {chunk[:200]!r}")
            self._lines += chunk.count(b"\r\n")

    async def write_round(self, jobs: list[str], seq: int) -> None:
        """One event of every job, job after job."""
        await self.write([(job, seq) for job in jobs])

    def close(self) -> None:
        self._writer.close()
