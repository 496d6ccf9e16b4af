"""In-process counters of a gateway, read by `/metrics` (no Redis command needed).

Plain integers and one fixed-bucket histogram, updated on the delivery hot path for the cost
of an addition; the Prometheus collector turns them into metric families only when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.delivery.base import CatchUpCause

# Upper bounds in milliseconds (event timestamps have millisecond resolution).
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1,
    2.5,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
)


@dataclass
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    total_ms: float = 0.0

    def observe_ms(self, value_ms: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS_MS, value_ms)] += 1
        self.total_ms += value_ms

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class GatewayStats:
    sockets_open: int = 0
    sockets_total: int = 0
    sse_open: int = 0  # Server-Sent Events streams
    sse_total: int = 0
    events_delivered: int = 0
    frames_sent: int = 0
    catch_ups: Counter[CatchUpCause] = field(default_factory=Counter)
    subscriber_reconnects: int = 0
    failovers: int = 0  # times a different Redis server (or replaced data) was noticed
    probes_sent: int = 0
    slow_client_closes: int = 0  # closed with 1013: accepted nothing for SEND_STALL_TIMEOUT_S
    flow_control_pauses: int = 0  # watches paused because their client had no room
    bad_frames: int = 0
    delivery_errors: int = 0  # unexpected errors handing a live frame to the hub
    malformed_frames: int = 0  # event frames from Redis the gateway could not read
    closes: Counter[int] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
