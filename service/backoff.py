"""How long to wait before retrying: one rule, exponential with random jitter.

Many processes (gateways, workers, thousands of browser tabs) lose the same Redis or the same
gateway at the same moment; retrying at fixed intervals would bring them back in step, and
the herd would knock over what just came back. Each wait is drawn at random below a ceiling
that doubles with every failed attempt, up to a cap.
"""

from __future__ import annotations

import random

# Reconnecting to Redis, or restarting a loop that failed: quick at first, then every few
# seconds at most.
RECONNECT_BASE_S = 0.1
RECONNECT_CAP_S = 5.0


def retry_delay_s(attempt: int, *, base_s: float, cap_s: float, at_least: float = 0.0) -> float:
    """Seconds to wait before retry number `attempt` (1-based): drawn from
    [`at_least` x ceiling, ceiling], the ceiling being `base_s` doubled per earlier attempt
    and at most `cap_s`. `at_least` 0 is "full jitter"; 0.5 keeps every wait at least half
    its ceiling (for clients that must not come back at once)."""
    ceiling = min(cap_s, base_s * 2.0 ** (max(1, attempt) - 1))
    return ceiling * (at_least + (1.0 - at_least) * random.random())


def reconnect_delay_s(failures: int) -> float:
    """The wait before reconnecting to Redis (or restarting a loop) after `failures` in a row."""
    return retry_delay_s(failures, base_s=RECONNECT_BASE_S, cap_s=RECONNECT_CAP_S)
