"""Redis clients, built in one place, and the mapping of Redis failures to the service's errors.

Choices made here on purpose:

- RESP2 is pinned (`protocol=2`): reply shapes do not change under us when redis-py changes
  its default, and every Redis-compatible provider speaks it.
- redis-py 8 retries every command up to 10 times by default, silently. We turn that off
  (`retries=0`) and retry explicitly, only where an operation is idempotent (`retrying`).
- Each use gets a socket timeout that fits it: short for commands, longer than the block for
  blocking reads, none for the Pub/Sub subscriber (an idle subscriber must not time out).
- Every command sent is counted by name, for the metrics and the A/B benchmark.
- A gateway's connections read the server's run id and replication id when they connect, so
  the gateway knows when it reaches a different server, or a server whose data was replaced
  (`ServerIdentity`): a restart, a failover, a full resync.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    MovedError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.backoff import retry_delay_s
from service.breaker import BreakerState, CircuitBreaker
from service.cluster_client import ClusterClient, WaitingCluster
from service.config import Settings
from service.model import RedisAtCapacity, RedisBusy, RedisUnavailable, ServiceError
from service.server_identity import ServerIdentity, info_field

log = logging.getLogger(__name__)

Role = Literal["gateway", "worker", "migrate", "dev", "bench", "producer"]
T = TypeVar("T")

BUSY_MESSAGE = "Server busy, please retry your request"
CAPACITY_MESSAGE = "Service is at capacity, please try again later"
UNAVAILABLE_MESSAGE = "Service temporarily unavailable, please retry shortly"

# Margin between a blocking command's own timeout and the socket's, so the server answers first.
BLOCK_MARGIN_S = 5.0


@dataclass
class CommandCounter:
    """Commands this process sent to Redis, by command name (upper case)."""

    counts: Counter[str] = field(default_factory=Counter)

    def total(self) -> int:
        return sum(self.counts.values())


# Arguments larger than this go to redis-py as memoryviews, which its packer sends as they
# are. redis-py 8.2 packs with hiredis when it can, copying every argument into one buffer per
# command: a worker writing megabyte events held each of them twice (its peak memory went from
# 46 to 93 MiB in tests/faults/test_large_events.py). With a memoryview among the arguments
# it keeps its own packer, which copies nothing larger than its 6,000-byte cutoff; so does 8.1.
ZERO_COPY_BYTES = 6000


def _zero_copy(arg: Any) -> Any:
    return memoryview(arg) if isinstance(arg, bytes) and len(arg) > ZERO_COPY_BYTES else arg


def _counting_class(
    base: type[AbstractConnection],
    counter: CommandCounter,
    live: weakref.WeakSet[Any],
    identity: ServerIdentity | None,
) -> type[Any]:
    """A connection class that counts every command it packs and registers its instances;
    with an `identity`, each new connection also reports the server's run and replication ids."""
    counts = counter.counts

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        live.add(self)

    async def on_connect_check_health(self: Any, check_health: bool = True) -> None:
        await base.on_connect_check_health(self, check_health=check_health)
        if identity is None:
            return
        try:
            await self.send_command("INFO", "server")
            server = await self.read_response()
            await self.send_command("INFO", "replication")
            replication = await self.read_response()
        except ResponseError as e:
            identity.refused(e)
            return
        identity.observe(info_field(server, b"run_id"), info_field(replication, b"master_replid"))

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        counts[str(name).split(" ", 1)[0].upper()] += 1
        if any(isinstance(arg, bytes) and len(arg) > ZERO_COPY_BYTES for arg in args):
            args = (name, *map(_zero_copy, args[1:]))
        packed: list[bytes] = base.pack_command(self, *args)
        return packed

    methods: dict[str, Any] = {"__init__": __init__, "pack_command": pack_command}
    if identity is not None:
        methods["on_connect_check_health"] = on_connect_check_health
    return type(f"Counting{base.__name__}", (base,), methods)


def pool_size(role: Role, settings: Settings, concurrency: int = 1) -> int:
    """How many command connections a process of `role` may hold.

    A gateway multiplexes everything over a couple of connections (plus its subscriber), so its
    connection count does not grow with its clients; a worker needs a few more as its
    concurrency grows, because handlers may talk to Redis while the emitter flushes.
    """
    if role == "gateway":
        return min(2, settings.redis_max_connections)
    if role == "worker":
        return min(2 + concurrency // 4, settings.redis_max_connections)
    return min(4, settings.redis_max_connections)


@dataclass
class RedisFactory:
    """Builds every Redis client of one process from `REDIS_URL`."""

    settings: Settings
    role: Role
    counter: CommandCounter = field(default_factory=CommandCounter)
    concurrency: int = 1
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    # Every connection object created, by purpose, for the "connections held" metric.
    connections: dict[str, weakref.WeakSet[Any]] = field(default_factory=dict)
    # Only a gateway keeps state that a different server would invalidate.
    identity: ServerIdentity | None = None

    def __post_init__(self) -> None:
        if self.identity is None and self.role == "gateway":
            self.identity = ServerIdentity()

    def connections_held(self) -> dict[str, int]:
        return {
            purpose: sum(1 for c in live if c.is_connected)
            for purpose, live in self.connections.items()
        }

    def _pool_kwargs(
        self, purpose: str, *, socket_timeout: float | None, health_check_s: int
    ) -> dict[str, Any]:
        options: dict[str, Any] = dict(parse_url(self.settings.redis_url))
        base = options.pop("connection_class", redis.Connection)
        live = self.connections.setdefault(purpose, weakref.WeakSet())
        # One server's identity: on a cluster every node has its own, so none is observed.
        identity = None if self.settings.redis_cluster else self.identity
        options.update(
            connection_class=_counting_class(base, self.counter, live, identity),
            protocol=2,
            socket_timeout=socket_timeout,
            socket_connect_timeout=self.settings.redis_connect_timeout_s,
            socket_keepalive=True,
            health_check_interval=health_check_s,
            retry=Retry(NoBackoff(), 0),
            client_name=f"resultcast-{self.role}",
        )
        return options

    def cluster(
        self, *, socket_timeout: float | None, max_connections: int, wait: bool = True
    ) -> redis.Redis:
        """A Redis Cluster client (`REDIS_CLUSTER=true`), from any one node's URL and the
        seeds in `REDIS_CLUSTER_NODES`; it rediscovers the cluster from every node it has seen.

        redis-py's `RedisCluster` speaks the same command API as `Redis` and routes each
        command to the primary of its key's slot; it is typed as `Redis` so callers keep one
        code path. What it cannot do (a script over keys of several slots, sharded Pub/Sub
        that survives a failover) is done per node by the code that needs it.
        """
        options: dict[str, Any] = dict(parse_url(self.settings.redis_url))
        ssl = options.pop("connection_class", None) is redis.SSLConnection
        options.pop("db", None)  # a cluster has only database 0
        waiting: dict[str, Any] = {"turn_timeout_s": self.settings.redis_socket_timeout_s}
        seeds = [ClusterNode(host, port) for host, port in self.settings.redis_cluster_nodes]
        cluster = (WaitingCluster if wait else ClusterClient)(
            **(waiting if wait else {}),
            **options,
            startup_nodes=seeds or None,
            ssl=ssl,
            protocol=2,
            socket_timeout=socket_timeout,
            socket_connect_timeout=self.settings.redis_connect_timeout_s,
            socket_keepalive=True,
            max_connections=max_connections,
            client_name=f"resultcast-{self.role}",
        )
        # RedisCluster takes no connection class, but builds each node's connections from
        # these shared arguments (redis-py injects its own settings the same way): count
        # the commands here too.
        base = redis.SSLConnection if ssl else redis.Connection
        live = self.connections.setdefault("commands", weakref.WeakSet())
        counting = _counting_class(base, self.counter, live, None)
        cluster.nodes_manager.connection_kwargs["connection_class"] = counting
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = counting
        return cast(redis.Redis, cluster)

    def node(self, host: str, port: int, *, socket_timeout: float | None) -> redis.Redis:
        """A client of one connection to one node of a cluster (auth and TLS from the URL)."""
        options = self._pool_kwargs("node", socket_timeout=socket_timeout, health_check_s=0)
        options.update(host=host, port=port)
        options.pop("db", None)
        pool = redis.ConnectionPool(max_connections=1, **options)
        return redis.Redis.from_pool(pool)

    def commands(self, max_connections: int | None = None, health_check_s: int = 30) -> redis.Redis:
        """The pooled client for ordinary commands; waits briefly for a free connection."""
        size = max_connections or pool_size(self.role, self.settings, self.concurrency)
        if self.settings.redis_cluster:
            # As many per node as on one server, and no more commands in flight than that.
            return self.cluster(
                socket_timeout=self.settings.redis_socket_timeout_s, max_connections=size
            )
        pool = redis.BlockingConnectionPool(
            max_connections=size,
            timeout=self.settings.redis_socket_timeout_s,
            **self._pool_kwargs(
                "commands",
                socket_timeout=self.settings.redis_socket_timeout_s,
                health_check_s=health_check_s,
            ),
        )
        return redis.Redis.from_pool(pool)

    def blocking(
        self, block_ms: int, max_connections: int = 1, *, wait: bool = True
    ) -> redis.Redis:
        """A client for blocking reads: its socket timeout outlasts the block.

        With `wait=False` a full pool refuses at once (a `capacity` error) instead of queueing.
        """
        if self.settings.redis_cluster:
            # redis-py's cluster pool refuses at once when full (MaxConnectionsError).
            return self.cluster(
                socket_timeout=block_ms / 1000 + BLOCK_MARGIN_S,
                max_connections=max_connections,
                wait=wait,
            )
        kwargs = self._pool_kwargs(
            "blocking", socket_timeout=block_ms / 1000 + BLOCK_MARGIN_S, health_check_s=0
        )
        pool: redis.ConnectionPool
        if wait:
            pool = redis.BlockingConnectionPool(
                max_connections=max_connections,
                timeout=self.settings.redis_socket_timeout_s,
                **kwargs,
            )
        else:
            pool = redis.ConnectionPool(max_connections=max_connections, **kwargs)
        return redis.Redis.from_pool(pool)

    def subscriber(self) -> redis.Redis:
        """A client for one Pub/Sub connection: no read timeout, liveness is probed instead."""
        pool = redis.ConnectionPool(
            max_connections=1,
            **self._pool_kwargs("subscriber", socket_timeout=None, health_check_s=0),
        )
        return redis.Redis.from_pool(pool)


def map_redis_error(error: BaseException) -> ServiceError | None:
    """The service error for a Redis failure, or None when it is not one we translate."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, RedisTimeoutError | asyncio.TimeoutError):
        return RedisBusy(BUSY_MESSAGE)
    if is_topology_change(error):
        return RedisUnavailable(UNAVAILABLE_MESSAGE)
    if isinstance(error, ResponseError):
        text = str(error).lower()
        if "max requests limit exceeded" in text or text.startswith("oom"):
            return RedisAtCapacity(CAPACITY_MESSAGE)
        if text.startswith(
            ("loading", "masterdown", "readonly", "tryagain", "clusterdown", "moved", "ask")
        ):
            return RedisUnavailable(UNAVAILABLE_MESSAGE)
        return None
    if isinstance(error, RedisConnectionError):
        if any(
            s in str(error).lower() for s in ("no connection available", "too many connections")
        ):
            # Our own pool is exhausted: we are at capacity, Redis itself is fine.
            return RedisAtCapacity(CAPACITY_MESSAGE)
        return RedisUnavailable(UNAVAILABLE_MESSAGE)
    if isinstance(error, OSError):
        return RedisUnavailable(UNAVAILABLE_MESSAGE)
    return None


@contextmanager
def redis_errors(operation: str, breaker: CircuitBreaker | None = None) -> Iterator[None]:
    """Turn Redis failures inside the block into `ServiceError`s, logging one line each.

    With a breaker, an open circuit fails the block at once, and the block's outcome is
    reported to the breaker: a Redis that answered (even with an error reply) is up.
    """
    if breaker is not None and not breaker.allow():
        raise RedisUnavailable(UNAVAILABLE_MESSAGE)
    try:
        yield
    except ServiceError:
        raise
    except Exception as e:
        mapped = map_redis_error(e)
        if breaker is not None:
            if mapped is None:
                breaker.success()  # Redis answered, if only with an error reply
            else:
                breaker.failure()
        if mapped is None:
            raise
        log.warning("redis %s failed: %s: %s", operation, type(e).__name__, e)
        raise mapped from e
    except BaseException:
        if breaker is not None and breaker.state is BreakerState.HALF_OPEN:
            breaker.failure()  # a cancelled probe proves nothing; try again later
        raise
    else:
        if breaker is not None:
            breaker.success()


def is_topology_change(error: BaseException) -> bool:
    """A Redis Cluster answer meaning "not here (any more)": a slot moved or is moving, or
    the cluster is down for a moment (a primary failing over)."""
    return (
        isinstance(error, MovedError | AskError | TryAgainError | ClusterDownError)
        or (
            isinstance(error, ResponseError)
            and any(s in str(error) for s in ("non local key", "cluster is down"))
        )
        # redis-py's cluster pipeline gives up following redirections while a slot moves.
        or (isinstance(error, ClusterError) and "TTL exhausted" in str(error))
    )


def is_transient(error: BaseException) -> bool:
    return isinstance(error, RedisConnectionError | RedisTimeoutError | OSError) or (
        isinstance(error, ResponseError) and str(error).startswith(("LOADING", "TRYAGAIN"))
    )


# Redis answers LOADING while it reads its data back after a restart (seconds for gigabytes):
# not an outage to give up on at start.
LOADING_WAIT_S = 120.0


async def wait_until_loaded(
    client: redis.Redis, key: str, what: str, limit_s: float = LOADING_WAIT_S
) -> None:
    """Return once Redis serves commands (an EXISTS of `key`, one this process may read);
    while it is loading its data set, wait (up to `limit_s`, saying so once). Any other
    failure is raised at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    attempt = 0
    while True:
        try:
            await client.exists(key)
            return
        except BusyLoadingError:
            if loop.time() > deadline:
                raise
            attempt += 1
            if attempt == 1:
                log.warning("%s: Redis is loading its data; waiting up to %gs", what, limit_s)
            await asyncio.sleep(retry_delay_s(attempt, base_s=0.1, cap_s=1.0))


async def retrying(
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int = 3,
    base_s: float = 0.05,
    cap_s: float = 1.0,
) -> T:
    """Run an idempotent operation, retrying transient failures with jittered backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except Exception as e:
            if attempt == attempts or not is_transient(e):
                raise
            await asyncio.sleep(retry_delay_s(attempt, base_s=base_s, cap_s=cap_s))
    raise AssertionError("unreachable")
