"""Private redis-server processes on free loopback ports, for `dev`, the bench, benchmarks and
tests: one server, or a Redis Cluster of three primaries with a replica each. Every process
is stopped by PID.

Facts the cluster relies on (measured on these machines): each node also listens on its
port + 10000 (the cluster bus), so a port is taken only if that one is free too and below
55536; and `cluster_state:ok` comes before the replicas have synced, while a primary whose
replica never synced is not failed over, so bring-up waits for every replica's link as well.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import redis.asyncio as redis

from service.processes import free_port, spawn

START_TIMEOUT_S = 10.0
BRING_UP_TIMEOUT_S = 60.0
NODE_TIMEOUT_MS = 2000


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            # A server whose default user is off answers NOAUTH: it is up all the same.
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server child; restartable on the same port and data dir."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, die_with_parent: bool = False) -> None:
        self.launch(die_with_parent=die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            if time.monotonic() > deadline:
                self.failed_to_start()
            time.sleep(0.02)

    def launch(self, *, die_with_parent: bool = False) -> None:
        """Start the process without waiting for it to answer (`answers` says when)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server was not found on the PATH: install it (Debian/Ubuntu: apt-get "
                "install redis-server; macOS: brew install redis), or set REDIS_URL to a "
                "running Redis"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = spawn(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                "--logfile",
                "redis.log",
                *self.args,
            ],
            die_with_parent=die_with_parent,
            stdout=subprocess.DEVNULL,
        )

    def answers(self) -> bool:
        """Whether it answers PING now; raises (with its log) if it has exited."""
        if self.process is not None and self.process.poll() is not None:
            self.failed_to_start()
        return _answers_ping(self.port)

    def failed_to_start(self) -> NoReturn:
        path = self.data_dir / "redis.log"
        log = path.read_text() if path.exists() else ""
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log[-2000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # in case a test froze it
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no chance to save or say goodbye."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, protocol=2)


def start_redis(
    data_dir: Path, port: int | None = None, extra_args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server keeping an append-only file in `data_dir`, that dies with this
    process; returns it and its URL. Raises RuntimeError, saying why, when it cannot start."""
    server = RedisServer(
        data_dir, port=port or free_port(), args=("--appendonly", "yes", *extra_args)
    )
    server.start(die_with_parent=True)
    assert server.process is not None
    return server.process, server.url


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


def cli(port: int, *args: str, check: bool = False) -> str:
    """One `redis-cli` command against a local node; its reply as text."""
    reply = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True, text=True, timeout=30, check=check,
    )  # fmt: skip
    return reply.stdout.strip()


def info(port: int, section: str) -> dict[str, str]:
    return dict(
        line.split(":", 1)
        for line in cli(port, "info", section).splitlines()
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
                raise RuntimeError("the local cluster did not become healthy")
            time.sleep(0.1)  # polling a condition, with a deadline

    def _healthy(self) -> bool:
        for node in self.live_nodes():
            if info(node.port, "cluster").get("cluster_enabled") != "1":
                return False
            if "cluster_state:ok" not in cli(node.port, "cluster", "info"):
                return False
            replication = info(node.port, "replication")
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
            ):
                return False
        return True

    def live_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def primaries(self) -> list[RedisServer]:
        return [n for n in self.live_nodes() if info(n.port, "replication").get("role") == "master"]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url, protocol=2)


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
