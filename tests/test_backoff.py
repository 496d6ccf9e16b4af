"""The one back-off rule: exponential ceilings, capped, drawn at random below them."""

from __future__ import annotations

import pytest

from service.backoff import RECONNECT_CAP_S, reconnect_delay_s, retry_delay_s
from service.client import reconnect_delay_s as client_reconnect_delay_s


@pytest.mark.parametrize("attempt", [1, 2, 3, 8, 40])
def test_each_wait_lies_under_its_doubling_capped_ceiling(attempt: int) -> None:
    ceiling = min(2.0, 0.05 * 2 ** (attempt - 1))
    waits = [retry_delay_s(attempt, base_s=0.05, cap_s=2.0) for _ in range(500)]
    assert all(0 <= w <= ceiling for w in waits)
    assert max(waits) > ceiling / 2  # drawn over the whole range, not a fixed step


def test_at_least_keeps_every_wait_above_that_share_of_its_ceiling() -> None:
    waits = [retry_delay_s(3, base_s=1.0, cap_s=10.0, at_least=0.5) for _ in range(500)]
    assert all(2.0 <= w <= 4.0 for w in waits)


def test_reconnects_never_wait_longer_than_the_cap() -> None:
    assert all(reconnect_delay_s(n) <= RECONNECT_CAP_S for n in range(1, 60))
    # The Python client: at least half of 0.25 s doubling per attempt, capped by the caller.
    assert all(0.125 <= client_reconnect_delay_s(0, 10.0) <= 0.25 for _ in range(100))
    assert all(5.0 <= client_reconnect_delay_s(9, 10.0) <= 10.0 for _ in range(100))
