"""A private Redis Cluster for tests: three primaries with a replica each, on free loopback
ports, created with `redis-cli --cluster create` and stopped by PID.

Facts it relies on (measured on these machines): each node also listens on its port + 10000
(the cluster bus), so a port is taken only if that one is free too and below 55536; and
`cluster_state:ok` comes before the replicas have synced, while a primary whose replica never
synced is not failed over, so bring-up waits for every replica's link as well.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as redis

from tests.redis_servers import RedisServer, free_port

BRING_UP_TIMEOUT_S = 60.0
NODE_TIMEOUT_MS = 2000


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose bus port (port + 10000) is free too and valid."""
    while True:
        port = free_port()
        bus = port + 10000
        if bus < 65536 and port not in taken and bus not in taken and _is_free(bus):
            return port


def _info(port: int, section: str) -> dict[str, str]:
    reply = subprocess.run(
        ["redis-cli", "-p", str(port), "info", section],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    return dict(
        line.split(":", 1)
        for line in reply.splitlines()
        if ":" in line and not line.startswith("#")
    )


@dataclass
class LocalCluster:
    """Six redis-server children in cluster mode: three primaries, one replica each."""

    root: Path
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Any one node: processes discover the rest."""
        return self.nodes[0].url

    def start(self) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        taken: set[int] = set()
        for i in range(6):
            port = free_cluster_port(taken)
            taken |= {port, port + 10000}
            node = RedisServer(
                self.root / f"node{i}",
                port=port,
                args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    "--appendonly", "no",
                ),
            )  # fmt: skip
            node.start()
            self.nodes.append(node)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        options = ["--cluster-replicas", "1", "--cluster-yes"]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, *options],
            capture_output=True,
            check=True,
            timeout=60,
        )
        self.wait_until_healthy()

    def wait_until_healthy(self) -> None:
        """Every live node sees the cluster ok, and every replica has synced."""
        deadline = time.monotonic() + BRING_UP_TIMEOUT_S
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not become healthy")
            time.sleep(0.1)  # polling a condition, with a deadline

    def _healthy(self) -> bool:
        for node in self.live_nodes():
            if _info(node.port, "cluster").get("cluster_enabled") != "1":
                return False
            state = subprocess.run(
                ["redis-cli", "-p", str(node.port), "cluster", "info"],
                capture_output=True, text=True, timeout=10, check=False,
            ).stdout  # fmt: skip
            if "cluster_state:ok" not in state:
                return False
            replication = _info(node.port, "replication")
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
            ):
                return False
        return True

    def live_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def primaries(self) -> list[RedisServer]:
        return [
            n for n in self.live_nodes() if _info(n.port, "replication").get("role") == "master"
        ]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url, protocol=2)


def _cli(port: int, *args: str) -> str:
    reply = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return reply.stdout.strip()


def node_id(port: int) -> str:
    return _cli(port, "cluster", "myid")


def migrate_slot(slot: int, source: RedisServer, target: RedisServer) -> int:
    """Move one slot and its keys from `source` to `target` the way `redis-cli --cluster
    reshard` does (IMPORTING, MIGRATING, MIGRATE of every key, then NODE); returns the keys
    moved. Blocking: run it in a thread from async code."""
    source_id, target_id = node_id(source.port), node_id(target.port)
    _cli(target.port, "cluster", "setslot", str(slot), "importing", source_id)
    _cli(source.port, "cluster", "setslot", str(slot), "migrating", target_id)
    moved = 0
    while True:
        keys = _cli(source.port, "cluster", "getkeysinslot", str(slot), "100").split()
        if not keys:
            break
        _cli(source.port, "migrate", "127.0.0.1", str(target.port), "", "0", "5000", "keys", *keys)
        moved += len(keys)
    for node in (target, source):
        _cli(node.port, "cluster", "setslot", str(slot), "node", target_id)
    return moved
