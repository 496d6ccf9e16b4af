"""In-process counters of a gateway, read by `/metrics` (no Redis command needed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class GatewayStats:
    sockets_open: int = 0
    sockets_total: int = 0
    events_delivered: int = 0
    catch_ups: Counter[str] = field(default_factory=Counter)
    subscriber_reconnects: int = 0
    probes_sent: int = 0
    slow_client_closes: int = 0
    bad_frames: int = 0
    closes: Counter[int] = field(default_factory=Counter)
