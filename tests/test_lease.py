"""The one lease: one holder at a time, renewed and released only by its holder."""

from __future__ import annotations

import pytest
import redis.asyncio as redis

from service.lease import Lease


async def test_one_holder_at_a_time_and_only_the_holder_renews_or_releases(
    rclient: redis.Redis,
) -> None:
    first, second = Lease(rclient, "l", 30, "a"), Lease(rclient, "l", 30, "b")
    assert await first.take() and not await second.take()
    assert await first.renew()
    assert 25_000 < await rclient.pttl("l") <= 30_000
    # The first holder stalls past its lease; the second takes it: the first can neither
    # renew nor delete the second's.
    await rclient.delete("l")
    assert await second.take()
    assert not await first.renew() and not first.held
    await first.release()
    assert await rclient.get("l") == second.token.encode()
    await second.release()
    assert await rclient.get("l") is None


async def test_take_within_waits_for_the_holder_then_says_busy(rclient: redis.Redis) -> None:
    holder = Lease(rclient, "w", 30)
    assert await holder.take()
    with pytest.raises(TimeoutError, match="busy"):
        await Lease(rclient, "w", 30).take_within(0.2, lambda: TimeoutError("busy"))
    await holder.release()
    waiting = Lease(rclient, "w", 30)
    await waiting.take_within(0.2, lambda: TimeoutError("busy"))
    assert waiting.held
