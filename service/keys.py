"""Every Redis key and channel name the service uses, in one place.

A job's keys and its notification channel carry the job id as a hash tag (`{<job>}`), so they
share one cluster slot: the emit script may touch all three atomically, and a sharded-Pub/Sub
deployment routes the channel to the same shard as the stream.

    <prefix>:{<job>}:events   stream of the job's result events (entry id `<seq>-0`)
    <prefix>:{<job>}:meta     hash: status, kind, seq, attempts, created_ms, updated_ms
    <prefix>:{<job>}:n        channel: one message per event, the exact client frame
    <prefix>:jobs             stream of submitted jobs, read by the `workers` group
    <prefix>:kinds            hash: job kinds that workers have registered -> last seen (ms)
    <prefix>:lease:maintenance  the maintenance lease (SET NX PX)
    <prefix>:migrations       hash: applied migration version -> applied at (ms)
    <prefix>:migrations:lock  held by the one migrator running
    <prefix>:layout           the Redis layout version (highest applied migration)
"""

from __future__ import annotations

from dataclasses import dataclass

WORKERS_GROUP = "workers"


@dataclass(frozen=True)
class Keys:
    """Key and channel names under one prefix."""

    prefix: str = "rc"

    def events(self, job: str) -> str:
        return f"{self.prefix}:{{{job}}}:events"

    def meta(self, job: str) -> str:
        return f"{self.prefix}:{{{job}}}:meta"

    def channel(self, job: str) -> str:
        return f"{self.prefix}:{{{job}}}:n"

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
        return f"{self.prefix}:jobs"

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
