"""Every Redis key and channel name the service uses, in one place.

A job's keys and its notification channel carry the job id as a hash tag (`{<job>}`), so they
share one cluster slot: the emit script may touch all three atomically, and a sharded-Pub/Sub
deployment routes the channel to the same shard as the stream.

    <prefix>:{<job>}:events   stream of the job's result events (entry id `<seq>-0`)
    <prefix>:{<job>}:meta     hash: status, kind, seq, attempts, created_ms, updated_ms
    <prefix>:{<job>}:n        channel: one message per event, the exact client frame
    <prefix>:{<job>}:writer   a producer's lease on writing the job (SET NX PX)
    <prefix>:jobs             stream of submitted jobs, read by the `workers` group
    <prefix>:jobs:{<i>}       with JOB_STREAMS > 1, streams 1..N-1 of job intake (each its own
                              hash tag, so a cluster spreads them over its shards)
    <prefix>:kinds            hash: job kinds that workers have registered -> last seen (ms)
    <prefix>:lease:maintenance  the maintenance lease (SET NX PX)
    <prefix>:migrations       hash: applied migration version -> applied at (ms)
    <prefix>:migrations:lock  held by the one migrator running
    <prefix>:layout           the Redis layout version (highest applied migration)
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

from redis.crc import key_slot

WORKERS_GROUP = "workers"


@dataclass(frozen=True)
class Keys:
    """Key and channel names under one prefix."""

    prefix: str = "rc"
    job_streams: int = 1  # JOB_STREAMS

    def events(self, job: str) -> str:
        return f"{self.prefix}:{{{job}}}:events"

    def meta(self, job: str) -> str:
        return f"{self.prefix}:{{{job}}}:meta"

    def channel(self, job: str) -> str:
        return f"{self.prefix}:{{{job}}}:n"

    def writer(self, job: str) -> str:
        return f"{self.prefix}:{{{job}}}:writer"

    @property
    def channel_pattern(self) -> str:
        """Matches every job's channel (and the gateways' probe channels)."""
        return f"{self.prefix}:{{*}}:n"

    def job_of_channel(self, channel: bytes) -> str:
        """The job id inside a channel name; cheap enough for the subscriber's hot path."""
        start = channel.index(b"{") + 1
        return channel[start : channel.index(b"}", start)].decode()

    def probe_channel(self, gateway_id: str) -> str:
        # Shaped like a job channel so the one pattern subscription receives it too.
        return self.channel(f"~probe-{gateway_id}")

    @property
    def jobs(self) -> str:
        """The first (with JOB_STREAMS=1, the only) stream of job intake."""
        return f"{self.prefix}:jobs"

    @property
    def job_stream_keys(self) -> tuple[str, ...]:
        """Every stream of job intake: today's key first, then one per extra hash tag."""
        return _job_streams(self.prefix, self.job_streams)

    def job_stream(self, job: str) -> str:
        """The intake stream a job goes to: spread evenly, the same one for the same id."""
        streams = self.job_stream_keys
        return streams[zlib.crc32(job.encode()) % len(streams)]

    @property
    def kinds(self) -> str:
        return f"{self.prefix}:kinds"

    @property
    def maintenance_lease(self) -> str:
        return f"{self.prefix}:lease:maintenance"

    @property
    def migrations(self) -> str:
        return f"{self.prefix}:migrations"

    @property
    def migrations_lock(self) -> str:
        return f"{self.prefix}:migrations:lock"

    @property
    def layout(self) -> str:
        return f"{self.prefix}:layout"


SLOTS = 16384


@functools.cache
def _job_streams(prefix: str, count: int) -> tuple[str, ...]:
    """Intake streams spread over a cluster's slot space, whatever the number of shards.

    Stream i (i >= 1) takes a hash tag whose slot lies in the middle of the widest gap left
    by streams 0..i-1: a stream's key never depends on how many streams there are (raising
    JOB_STREAMS adds streams, it does not move any), and a few streams already fall into
    different parts of the slot range, so onto different primaries of a cluster.
    """
    keys = [f"{prefix}:jobs"]
    taken = [key_slot(keys[0].encode())]
    for i in range(1, count):
        ordered = sorted(taken)
        following = ordered[1:] + ordered[:1]
        gaps = [((b - a) % SLOTS or SLOTS, a) for a, b in zip(ordered, following, strict=True)]
        width, start = max(gaps)
        target = (start + width // 2) % SLOTS
        tag = next(
            t
            for t in (f"{i}.{n}" for n in range(100_000))
            if abs(key_slot(t.encode()) - target) <= width // 8
        )
        keys.append(f"{prefix}:jobs:{{{tag}}}")
        taken.append(key_slot(tag.encode()))
    return tuple(keys)
