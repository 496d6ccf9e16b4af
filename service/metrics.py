"""Prometheus metrics, collected from in-process counters when scraped.

Nothing here talks to Redis: `/metrics` costs no Redis command. Each process builds its own
registry (no global state), so tests and several apps in one process do not mix figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from service.delivery.base import CatchUpCause
from service.gateway.protocol import CloseCode
from service.redis_client import RedisFactory
from service.stats import LATENCY_BUCKETS_MS, GatewayStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def redis_families(
    factory: RedisFactory, role: str
) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    commands = CounterMetricFamily(
        "resultcast_redis_commands", "Redis commands sent by this process", labels=["command"]
    )
    for name, count in sorted(factory.counter.counts.items()):
        commands.add_metric([name], count)
    yield commands
    connections = GaugeMetricFamily(
        "resultcast_redis_connections", "Redis connections held", labels=["role", "purpose"]
    )
    for purpose, held in sorted(factory.connections_held().items()):
        connections.add_metric([role, purpose], held)
    yield connections
    yield GaugeMetricFamily(
        "resultcast_redis_circuit_state",
        "The Redis circuit breaker: 0 closed, 1 open (failing fast), 2 half-open (probing)",
        value=int(factory.breaker.state),
    )
    yield CounterMetricFamily(
        "resultcast_redis_circuit_opened",
        "Times the Redis circuit opened",
        value=factory.breaker.opened,
    )


def _tasks_alive() -> int:
    """Tasks of this thread's running event loop (0 when scraped from elsewhere)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0


@dataclass(eq=False)
class GatewayCollector(Collector):
    stats: GatewayStats
    factory: RedisFactory
    mode: str
    watch_count: Callable[[], int]
    ready: Callable[[], bool]
    paused_count: Callable[[], int]
    catch_up_backlog: Callable[[], int]
    max_sockets: int = 0

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s, mode = self.stats, [self.mode]
        yield from redis_families(self.factory, "gateway")

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=["mode"])
            family.add_metric(mode, value)
            return family

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=["mode"])
            family.add_metric(mode, value)
            return family

        yield gauge("resultcast_sockets_open", "WebSocket connections open", s.sockets_open)
        yield gauge("resultcast_watches_active", "Watches held by open sockets", self.watch_count())
        yield gauge(
            "resultcast_watches_paused",
            "Watches whose client is behind: served from the stream once it drains",
            self.paused_count(),
        )
        yield gauge(
            "resultcast_catch_up_backlog",
            "Watched jobs waiting for, or in, a catch-up read from their stream",
            self.catch_up_backlog(),
        )
        yield gauge(
            "resultcast_delivery_ready",
            "1 while events can be delivered live",
            1 if self.ready() else 0,
        )
        yield gauge(
            "resultcast_max_sockets",
            "MAX_SOCKETS: connections this gateway accepts at most (alert near it)",
            self.max_sockets,
        )
        yield gauge(
            "resultcast_asyncio_tasks",
            "Tasks alive in the gateway's event loop (one or two per open connection): a count "
            "that grows while connections do not is a leak",
            _tasks_alive(),
        )
        yield counter("resultcast_sockets", "WebSocket connections accepted", s.sockets_total)
        open_streams = GaugeMetricFamily(
            "resultcast_streams_open",
            "Client streams open, by transport (WebSocket, Server-Sent Events)",
            labels=["mode", "transport"],
        )
        open_streams.add_metric([self.mode, "ws"], s.sockets_open)
        open_streams.add_metric([self.mode, "sse"], s.sse_open)
        yield open_streams
        streams = CounterMetricFamily(
            "resultcast_streams",
            "Client streams accepted, by transport",
            labels=["mode", "transport"],
        )
        streams.add_metric([self.mode, "ws"], s.sockets_total)
        streams.add_metric([self.mode, "sse"], s.sse_total)
        yield streams
        yield counter(
            "resultcast_events_delivered", "Event frames queued to sockets", s.events_delivered
        )
        yield counter(
            "resultcast_subscriber_reconnects", "Pub/Sub re-subscriptions", s.subscriber_reconnects
        )
        yield counter(
            "resultcast_redis_server_changes",
            "Times a different Redis server, or replaced data, was noticed",
            s.failovers,
        )
        yield counter("resultcast_probes", "Liveness probes published", s.probes_sent)
        yield counter(
            "resultcast_slow_client_closes",
            "Sockets closed with 1013: they accepted nothing for SEND_STALL_TIMEOUT_S",
            s.slow_client_closes,
        )
        yield counter(
            "resultcast_flow_control_pauses",
            "Times a watch was paused because its client had no room (flow control)",
            s.flow_control_pauses,
        )
        yield counter("resultcast_bad_frames", "Client frames refused", s.bad_frames)
        yield counter(
            "resultcast_delivery_errors",
            "Unexpected errors handing a live frame to the hub (that job was caught up)",
            s.delivery_errors,
        )
        yield counter(
            "resultcast_malformed_frames",
            "Event frames from Redis that could not be read (their job was caught up)",
            s.malformed_frames,
        )
        catch_ups = CounterMetricFamily(
            "resultcast_catch_ups", "Catch-ups from the stream, by cause", labels=["mode", "cause"]
        )
        for cause in CatchUpCause:
            catch_ups.add_metric([self.mode, cause.value], s.catch_ups[cause])
        yield catch_ups
        closes = CounterMetricFamily(
            "resultcast_socket_closes",
            "Sockets closed by the gateway, by code",
            labels=["mode", "code"],
        )
        # Every code the gateway closes with, at 0 until it happens: an alert on one
        # (1013, 1011) has a series to read from the start.
        for code in sorted({int(c) for c in CloseCode} | set(s.closes)):
            closes.add_metric([self.mode, str(code)], s.closes.get(code, 0))
        yield closes
        histogram = HistogramMetricFamily(
            "resultcast_delivery_latency_seconds",
            "From the event's timestamp to its send on the socket (one send in 8 is timed)",
            labels=["mode"],
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS_MS, float("inf")), s.latency.counts, strict=True):
            cumulative += count
            buckets.append((str(bound / 1000) if bound != float("inf") else "+Inf", cumulative))
        histogram.add_metric(mode, buckets, s.latency.total_ms / 1000)
        yield histogram


def registry_with(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


@dataclass
class QueueDepth:
    """The jobs stream as the maintenance lease holder last sampled it."""

    sampled_at: float = 0.0
    waiting: int = 0
    pending: dict[str, int] | None = None
    oldest_pending_age_s: float = 0.0


@dataclass(eq=False)
class WorkerCollector(Collector):
    factory: RedisFactory
    jobs_finished: Callable[[], dict[str, int]]
    events_written: Callable[[], int]
    emit_round_trips: Callable[[], int]
    running: Callable[[], int]
    queue: Callable[[], QueueDepth | None]
    intake_paused: Callable[[], bool]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from redis_families(self.factory, "worker")
        jobs = CounterMetricFamily(
            "resultcast_jobs_finished", "Jobs finished here", labels=["outcome"]
        )
        for outcome, count in sorted(self.jobs_finished().items()):
            jobs.add_metric([outcome], count)
        yield jobs
        yield CounterMetricFamily(
            "resultcast_events_written",
            "Events made durable and published",
            value=self.events_written(),
        )
        yield CounterMetricFamily(
            "resultcast_emit_round_trips",
            "Pipelines sent by the emitter",
            value=self.emit_round_trips(),
        )
        yield GaugeMetricFamily(
            "resultcast_jobs_running", "Jobs running here", value=self.running()
        )
        yield GaugeMetricFamily(
            "resultcast_intake_paused",
            "1 while this worker takes no new jobs because its events cannot be written",
            value=1 if self.intake_paused() else 0,
        )
        depth = self.queue()
        if depth is None:
            return  # only the maintenance lease holder exports the queue, so it is counted once
        yield GaugeMetricFamily(
            "resultcast_jobs_waiting", "Jobs not yet taken by any worker", value=depth.waiting
        )
        pending = GaugeMetricFamily(
            "resultcast_jobs_pending", "Jobs taken and not acknowledged", labels=["group"]
        )
        for group, count in sorted((depth.pending or {}).items()):
            pending.add_metric([group], count)
        yield pending
        yield GaugeMetricFamily(
            "resultcast_oldest_pending_age_seconds",
            "Age of the oldest unacknowledged job",
            value=depth.oldest_pending_age_s,
        )
