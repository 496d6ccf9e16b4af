"""Cluster tests share one local cluster per module (`cluster`; a module whose tests break
nodes defines its own, one per test).

redis-py 8.1's asyncio `RedisCluster` drops the node object it read the slot map from without
closing its connection (one socket per client and refresh). Collect those after each test with
the ResourceWarning they raise silenced, here only, so that they are not reported later
against an unrelated test or at the end of the session."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator

import pytest

from tests.redis_cluster import LocalCluster


@pytest.fixture(autouse=True)
def collect_redis_py_cluster_leftovers() -> Iterator[None]:
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        local.start()
        yield local
    finally:
        local.stop()
