"""Cluster tests: redis-py 8.1's asyncio `RedisCluster` drops the node object it read the slot
map from without closing its connection (one socket per client and refresh). Collect those
after each test with the ResourceWarning they raise silenced, here only, so that they are not
reported later against an unrelated test or at the end of the session."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def collect_redis_py_cluster_leftovers() -> Iterator[None]:
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
