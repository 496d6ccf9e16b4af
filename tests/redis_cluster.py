"""A private Redis Cluster for tests (`service.local_redis.LocalCluster`), and moving a slot
between its primaries the way `redis-cli --cluster reshard` does."""

from __future__ import annotations

from service.local_redis import LocalCluster, RedisServer, cli

__all__ = ["LocalCluster", "migrate_slot", "node_id"]


def node_id(port: int) -> str:
    return cli(port, "cluster", "myid", check=True)


def migrate_slot(slot: int, source: RedisServer, target: RedisServer) -> int:
    """Move one slot and its keys from `source` to `target` the way `redis-cli --cluster
    reshard` does (IMPORTING, MIGRATING, MIGRATE of every key, then NODE); returns the keys
    moved. Blocking: run it in a thread from async code."""
    source_id, target_id = node_id(source.port), node_id(target.port)
    cli(target.port, "cluster", "setslot", str(slot), "importing", source_id, check=True)
    cli(source.port, "cluster", "setslot", str(slot), "migrating", target_id, check=True)
    moved = 0
    while True:
        keys = cli(source.port, "cluster", "getkeysinslot", str(slot), "100", check=True).split()
        if not keys:
            break
        target_address = ("127.0.0.1", str(target.port), "", "0", "5000")
        cli(source.port, "migrate", *target_address, "keys", *keys, check=True)
        moved += len(keys)
    for node in (target, source):
        cli(node.port, "cluster", "setslot", str(slot), "node", target_id, check=True)
    return moved
