"""What a phase cost where: CPU of the gateways and of each Redis node, the bytes the gateways
received from Redis, and how messages and keys spread over a cluster's shards.

Read from outside the processes measured (/proc, `ss`, INFO), so measuring changes nothing
in them; INFO asks are a handful of commands per phase on nodes that run thousands.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from service.bench.harness import Stack

_PID = re.compile(r"pid=(\d+),")
_RECEIVED = re.compile(r"bytes_received:(\d+)")
PUBLISHING = ("cmdstat_publish", "cmdstat_spublish")


@dataclass
class Node:
    address: str
    role: str
    keys: int
    messages: int  # PUBLISH + SPUBLISH calls, inside scripts too
    cpu_s: float


@dataclass
class Snapshot:
    gateways_cpu_s: float
    gateways_bytes_in: int
    nodes: dict[str, Node]


def _bytes_received(pids: set[int], ports: set[int]) -> int:
    """Bytes the processes `pids` received on their open TCP connections to `ports`."""
    listing = subprocess.run(
        ["ss", "-tinpH", "state", "established"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    total, counting = 0, False
    for line in listing.splitlines():
        if not line.startswith(("\t", " ")):
            fields = line.split()
            pid = _PID.search(line)
            peer_port = int(fields[3].rsplit(":", 1)[1]) if len(fields) > 3 else -1
            counting = pid is not None and int(pid.group(1)) in pids and peer_port in ports
        elif counting and (found := _RECEIVED.search(line)):
            total += int(found.group(1))
    return total


async def _node(client: Any) -> Node:
    async with client:
        stats: Any = await client.info("commandstats")
        cpu: Any = await client.info("cpu")
        role: Any = await client.info("replication")
        keys = int(await client.dbsize())
        where = client.connection_pool.connection_kwargs
    return Node(
        address=f"{where['host']}:{where['port']}",
        role=str(role["role"]),
        keys=keys,
        messages=sum(int(stats[name]["calls"]) for name in PUBLISHING if name in stats),
        cpu_s=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
    )


async def snapshot(stack: Stack) -> Snapshot:
    nodes = [await _node(client) for client in await stack.nodes(primaries_only=False)]
    ports = {int(node.address.rsplit(":", 1)[1]) for node in nodes}
    received = await asyncio.to_thread(_bytes_received, set(stack.gateway_pids), ports)
    return Snapshot(stack.gateways_cpu_s(), received, {n.address: n for n in nodes})


def costs(before: Snapshot, after: Snapshot, delivered: int) -> dict[str, Any]:
    """Per delivered event: gateway CPU, Redis CPU (primaries and replicas apart) and bytes
    the gateways received; and each primary's share of messages and keys."""
    per_event = 1e6 / max(1, delivered)
    primaries = [n for n in after.nodes.values() if n.role == "master"]
    replicas = [n for n in after.nodes.values() if n.role != "master"]

    def cpu_s(nodes: list[Node]) -> float:
        return sum(
            n.cpu_s - before.nodes[n.address].cpu_s for n in nodes if n.address in before.nodes
        )

    messages = {
        n.address: n.messages - before.nodes[n.address].messages
        for n in primaries
        if n.address in before.nodes
    }
    total_messages = max(1, sum(messages.values()))
    total_keys = max(1, sum(n.keys for n in primaries))
    return {
        "gateway_cpu_us_per_event": (after.gateways_cpu_s - before.gateways_cpu_s) * per_event,
        "redis_cpu_us_per_event": cpu_s(primaries) * per_event,
        "replica_cpu_us_per_event": cpu_s(replicas) * per_event,
        "redis_bytes_in_per_event": (after.gateways_bytes_in - before.gateways_bytes_in)
        / max(1, delivered),
        "shards": [
            {
                "primary": n.address,
                "messages": messages.get(n.address, 0),
                "messages_share": messages.get(n.address, 0) / total_messages,
                "keys": n.keys,
                "keys_share": n.keys / total_keys,
            }
            for n in sorted(primaries, key=lambda n: n.address)
        ],
    }
