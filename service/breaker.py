"""A circuit breaker around Redis, one per process.

Closed: calls go through. After `failure_threshold` consecutive failures it opens: calls fail
at once with `unavailable` instead of each waiting out a connect timeout, so requests do not
pile up and clients are not hammering a Redis that is down. After `open_s` it lets one call
through as a probe (half-open): success closes it, failure opens it again for twice as long,
up to `max_open_s` (kept short: recovery after Redis returns is bounded by it).
"""

from __future__ import annotations

import logging
import time
from enum import IntEnum

log = logging.getLogger(__name__)


class BreakerState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(
        self, *, failure_threshold: int = 5, open_s: float = 0.5, max_open_s: float = 2.0
    ) -> None:
        self.failure_threshold = failure_threshold
        self.base_open_s = open_s
        self.max_open_s = max_open_s
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened = 0  # times it opened, for the metrics
        self._open_s = open_s
        self._retry_at = 0.0

    def allow(self) -> bool:
        """May a call go to Redis now? While open, only one probe per period."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and time.monotonic() >= self._retry_at:
            self.state = BreakerState.HALF_OPEN  # this caller is the probe
            return True
        return False

    def success(self) -> None:
        if self.state is not BreakerState.CLOSED:
            log.info("redis circuit closed: Redis answers again")
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._open_s = self.base_open_s

    def failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self._open_s = min(self.max_open_s, self._open_s * 2)
            self._trip()
        elif self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold:
            self._trip()
            log.warning(
                "redis circuit open after %d failures: failing fast for %.1fs",
                self.failures,
                self._open_s,
            )

    def _trip(self) -> None:
        if self.state is not BreakerState.OPEN:
            self.opened += 1
        self.state = BreakerState.OPEN
        self._retry_at = time.monotonic() + self._open_s

    @property
    def is_open(self) -> bool:
        return self.state is not BreakerState.CLOSED
