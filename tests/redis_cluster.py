"""A private Redis Cluster for tests (`service.local_redis.LocalCluster`), and moving a slot
between its primaries the way `redis-cli --cluster reshard` does."""

from __future__ import annotations

from service.local_redis import LocalCluster, migrate_slot, node_id

__all__ = ["LocalCluster", "migrate_slot", "node_id"]
