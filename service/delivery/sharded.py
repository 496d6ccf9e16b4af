"""`DELIVERY_MODE=pubsub` on a Redis Cluster: sharded Pub/Sub, one subscriber per primary.

A job's channel lives on the shard that serves the job's slot (its hash tag), and workers
notify with `SPUBLISH`. A gateway process holds one connection per shard primary and
`SSUBSCRIBE`s the channel of each job it follows while it follows it: one command when the
first local watcher of a job arrives, one when the last leaves, nothing while idle. One
`SSUBSCRIBE` may only name channels of one slot, so every command here names one channel
(a resubscription never mixes slots: the redis-py bug that silently stopped delivery).

redis-py 8's asyncio cluster Pub/Sub reads one node at a time and does not move the channels
of a node that went away (see docs/redis-cluster.md), so the shard connections are
ours: redis-py's `Connection` for the handshake (auth, TLS, client name), our own reading.

Topology changes are subscriber losses like any other. A shard connection that drops (a
primary killed, a network cut), a channel that Redis unsubscribes by itself (its slot moved
to another primary) or an error reply (MOVED) makes the source re-read the cluster's slot map,
subscribe each followed channel where it lives now, and report the jobs as missed once the
new subscription is confirmed: the hub catches them up from their streams.

Server identity is per node: each shard connection reads its node's run id and replication id
when it connects. A channel confirmed on a node whose identity differs from the one it was last
confirmed on (a promoted replica, a node restarted with other data, a slot moved to another
primary) is reported as a server change for its job: the hub checks that job's watches
against the node's data before it delivers live frames again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import parse_url
from redis.exceptions import ResponseError

from service.aio import stop_tasks
from service.backoff import retry_delay_s
from service.config import Settings
from service.delivery.base import CatchUpCause, LiveSink
from service.delivery.replies import NOT_ENOUGH_DATA, Replies
from service.delivery.supervise import restart_forever
from service.keys import Keys
from service.server_identity import as_text, info_field

log = logging.getLogger(__name__)

# A node's run id and replication id (the latter None when the node did not say).
Identity = tuple[bytes, bytes | None]

SMESSAGE = b"smessage"
SSUBSCRIBE = b"ssubscribe"
SUNSUBSCRIBE = b"sunsubscribe"
REROUTE_AFTER_S = 0.05


class Shard:
    """One primary's subscriber connection and the channels it should hold."""

    def __init__(self, source: ShardedSource, name: str, host: str, port: int) -> None:
        self.name = name
        self._source = source
        self._host, self._port = host, port
        self.channels: set[bytes] = set()  # what this shard should be subscribed to
        self._confirmed: set[bytes] = set()
        self._outgoing: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self.connected = False
        self.identity: Identity | None = None  # of the node, read at each connect
        self._task: asyncio.Task[None] | None = None
        self._served = False  # whether the current attempt connected

    def start(self) -> None:
        self._task = asyncio.create_task(
            restart_forever(
                f"the subscriber of shard {self.name}", self._connect_and_serve, worked=self._worked
            ),
            name=f"shard-{self.name}",
        )

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])

    def subscribe(self, channel: bytes) -> None:
        if channel not in self.channels:
            self.channels.add(channel)
            self._send("SSUBSCRIBE", channel)

    def ensure(self, channel: bytes) -> None:
        """Subscribe again unless confirmed (after a refusal or an unsolicited unsubscribe)."""
        if channel in self.channels and channel not in self._confirmed:
            self._send("SSUBSCRIBE", channel)

    def unsubscribe(self, channel: bytes) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            self._confirmed.discard(channel)
            self._send("SUNSUBSCRIBE", channel)

    def _send(self, command: str, channel: bytes) -> None:
        if self.connected:
            self._outgoing.append((command, channel))
            self._wake.set()
        # Not connected: the next connection subscribes to `channels` as a whole.

    async def _connect_and_serve(self) -> None:
        """One connection to the node: subscribe, serve until it is lost, then raise (the
        supervisor reconnects)."""
        self._served = False
        connection = self._source.connection(self._host, self._port)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            self._served = True
            await self._serve(connection)
        except Exception:
            # The node may be gone for good (a failover): find where its channels live now.
            self._source.topology_changed()
            raise
        finally:
            self.connected = False
            self._confirmed.clear()
            with contextlib.suppress(Exception):
                await connection.disconnect()

    def _worked(self) -> bool:
        return self._served

    async def _serve(self, connection: redis.Connection) -> None:
        self._outgoing.clear()
        self.identity = await self._read_identity(connection)
        self.connected = True
        if self.channels:
            commands = [("SSUBSCRIBE", channel) for channel in self.channels]
            await connection.send_packed_command(connection.pack_commands(commands))
        writer = asyncio.create_task(self._write(connection), name=f"shard-{self.name}-writer")
        replies = Replies(connection)
        next_reply, receive = replies.next, replies.receive
        try:
            while True:
                try:
                    reply: Any = next_reply()
                except ResponseError as e:
                    # MOVED and the like: this node no longer serves some channel.
                    log.info("shard %s refused a subscription (%s); re-reading slots", self.name, e)
                    self._source.topology_changed()
                    continue
                if reply is NOT_ENOUGH_DATA:
                    await receive()
                else:
                    self._handle(reply)
        finally:
            await stop_tasks([writer])

    async def _read_identity(self, connection: redis.Connection) -> Identity | None:
        """The node's run id and replication id: a restart or a promotion changes them."""
        try:
            await connection.send_command("INFO", "server", "replication")
            info: Any = await connection.read_response()
        except ResponseError as e:  # an ACL without INFO: position checks only
            log.info("shard %s: cannot read the node's run id (%s)", self.name, e)
            return None
        info = info if isinstance(info, bytes) else str(info).encode()
        run_id = info_field(info, b"run_id")
        return None if run_id is None else (run_id, info_field(info, b"master_replid"))

    async def _write(self, connection: redis.Connection) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            commands = list(self._outgoing)
            self._outgoing.clear()
            if commands:
                await connection.send_packed_command(connection.pack_commands(commands))

    def _handle(self, reply: Any) -> None:
        kind, channel = reply[0], reply[1]
        if kind == SMESSAGE:
            self._source.hand_over(channel, reply[2])
        elif kind == SSUBSCRIBE:
            if channel in self.channels and channel not in self._confirmed:
                self._confirmed.add(channel)
                # Anything published before this moment may have been missed here.
                self._source.subscribed(channel, self.identity)
        elif kind == SUNSUBSCRIBE and channel in self.channels:
            # Not asked for: Redis moved the channel's slot to another primary.
            self._confirmed.discard(channel)
            self._source.topology_changed()


class ShardedSource:
    """The live source for `pubsub` mode on a Redis Cluster."""

    mode = "pubsub"

    def __init__(self, settings: Settings, cluster: redis.RedisCluster) -> None:
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._cluster = cluster
        self._sink: LiveSink | None = None
        self._shards: dict[str, Shard] = {}
        self._where: dict[bytes, Shard] = {}  # followed channel -> the shard holding it
        # Followed channel -> the identity of the node it was last confirmed on (None: unknown).
        self._seen_on: dict[bytes, Identity | None] = {}
        self._changed: list[str] = []  # jobs whose node changed, to report together
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_again = False
        self._stopping: set[asyncio.Task[None]] = set()
        options: dict[str, Any] = dict(parse_url(settings.redis_url))
        for name in ("host", "port", "db"):
            options.pop(name, None)
        self._connection_class = options.pop("connection_class", redis.Connection)
        self._options = options

    def connection(self, host: str, port: int) -> redis.Connection:
        """A subscriber connection to one node: no read timeout (idle is normal)."""
        connection: redis.Connection = self._connection_class(
            host=host,
            port=port,
            protocol=2,
            socket_timeout=None,
            socket_connect_timeout=self._settings.redis_connect_timeout_s,
            socket_keepalive=True,
            client_name="resultcast-gateway",
            **self._options,
        )
        return connection

    async def start(self, sink: LiveSink) -> None:
        self._sink = sink
        await self._cluster.initialize()
        for node in self._cluster.get_primaries():
            self._shard(node.name, node.host, int(node.port))

    async def stop(self) -> None:
        if self._refresh is not None:
            await stop_tasks([self._refresh])
        for shard in self._shards.values():
            await shard.stop()

    def ready(self) -> bool:
        return bool(self._shards) and all(s.connected for s in self._shards.values())

    def describe(self) -> dict[str, Any]:
        return {
            "source": "sharded",
            "shards": [
                {
                    "node": name,
                    "connected": shard.connected,
                    "channels": len(shard.channels),
                    "run_id": as_text(shard.identity[0]) if shard.identity else None,
                    "replication_id": as_text(shard.identity[1]) if shard.identity else None,
                }
                for name, shard in sorted(self._shards.items())
            ],
        }

    def follow(self, job: str, after_seq: int) -> None:
        channel = self._keys.channel(job).encode()
        shard = self._owner(channel)
        if shard is not None:
            self._where[channel] = shard
            shard.subscribe(channel)
        else:
            self.topology_changed()

    def unfollow(self, job: str) -> None:
        channel = self._keys.channel(job).encode()
        shard = self._where.pop(channel, None)
        self._seen_on.pop(channel, None)
        if shard is not None:
            shard.unsubscribe(channel)

    # -- what the shards report ------------------------------------------------------------------

    def hand_over(self, channel: bytes, frame: bytes) -> None:
        assert self._sink is not None
        if channel in self._where:
            self._sink.publish(self._keys.job_of_channel(channel), frame)

    def subscribed(self, channel: bytes, identity: Identity | None) -> None:
        assert self._sink is not None
        if channel not in self._where:
            return
        job = self._keys.job_of_channel(channel)
        first = channel not in self._seen_on
        before = self._seen_on.get(channel)
        self._seen_on[channel] = identity
        if not first and before is not None and identity is not None and identity != before:
            # Another node, or this one restarted or promoted: what it holds for the job may
            # not be what was delivered. Reported once per batch of confirmations.
            self._changed.append(job)
            if len(self._changed) == 1:
                asyncio.get_running_loop().call_soon(self._report_changed)
            return
        self._sink.missed([job], CatchUpCause.SUBSCRIBE if first else CatchUpCause.RECONNECT)

    def _report_changed(self) -> None:
        jobs, self._changed = self._changed, []
        if self._sink is not None and jobs:
            self._sink.server_changed(jobs)

    def topology_changed(self) -> None:
        """Re-read the slot map soon, and move every followed channel to where it lives."""
        if self._refresh is not None and not self._refresh.done():
            self._refresh_again = True
            return
        self._refresh = asyncio.create_task(self._reroute(), name="shard-topology")

    # -- topology ------------------------------------------------------------------------------

    def _shard(self, name: str, host: str, port: int) -> Shard:
        shard = self._shards.get(name)
        if shard is None:
            shard = self._shards[name] = Shard(self, name, host, port)
            shard.start()
        return shard

    def _owner(self, channel: bytes) -> Shard | None:
        node = self._cluster.get_node_from_key(channel.decode())
        if node is None:
            return None
        return self._shard(node.name, node.host, int(node.port))

    async def _reroute(self) -> None:
        while True:
            # Let a burst of reports (every channel of a lost node) make one re-read, and give
            # the cluster a moment to agree on its new map.
            await asyncio.sleep(REROUTE_AFTER_S)
            self._refresh_again = False
            try:
                await self._cluster.nodes_manager.initialize()
            except Exception as e:
                log.warning("could not re-read the cluster's slots: %s: %s", type(e).__name__, e)
                await asyncio.sleep(retry_delay_s(1, base_s=0.2, cap_s=2.0))
                self._refresh_again = True
            else:
                self._apply_topology()
            if not self._refresh_again:
                return

    def _apply_topology(self) -> None:
        primaries = {node.name: node for node in self._cluster.get_primaries()}
        for channel, shard in list(self._where.items()):
            owner = self._owner(channel)
            if owner is None:
                continue
            if owner is shard:
                shard.ensure(channel)
                continue
            shard.unsubscribe(channel)
            self._where[channel] = owner
            owner.subscribe(channel)  # confirmed -> `subscribed` -> the hub catches it up
        for name, shard in list(self._shards.items()):
            if name not in primaries and not shard.channels:
                del self._shards[name]
                task = asyncio.create_task(shard.stop())
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)
