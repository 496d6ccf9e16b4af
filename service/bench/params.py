"""The A/B benchmark's workload parameters (no heavy imports: the CLI reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Params:
    idle_sockets: int = 1000
    idle_seconds: float = 30.0
    burst_jobs: int = 200
    burst_events: int = 200
    steady_sockets: int = 500
    steady_rate: int = 500
    steady_seconds: int = 10
