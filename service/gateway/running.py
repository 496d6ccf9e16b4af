"""The running parts of one gateway process: built when its lifespan starts, gone after.

Everything that holds a Redis connection or a task lives here and nowhere else, so the
transports (`ws.py`, `sse.py`) and the HTTP endpoints (`app.py`) depend on this module, and
it on none of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from service.config import Settings
from service.delivery import Delivery, create_delivery
from service.gateway.health import Health
from service.gateway.jobs import Intake
from service.gateway.sessions import Sessions
from service.keys import Keys
from service.metrics import GatewayCollector, registry_with
from service.migrate import require_layout
from service.redis_client import RedisFactory
from service.stats import GatewayStats
from service.streams import JobStore

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything one gateway process holds while it runs."""

    settings: Settings
    factory: RedisFactory
    intake: Intake
    health: Health
    delivery: Delivery
    sessions: Sessions
    stats: GatewayStats
    metrics: CollectorRegistry
    # The loop it runs in, handed to each connection: asyncio asks the OS for the process id
    # on every `get_running_loop`.
    loop: asyncio.AbstractEventLoop


@asynccontextmanager
async def running_gateway(settings: Settings, sessions: Sessions) -> AsyncIterator[Gateway]:
    """Redis clients, the delivery (subscriber and hub), intake, health and metrics, for as
    long as the block runs; on the way out every client is told the gateway is going away
    (1001) within SHUTDOWN_GRACE_S before the connections close."""
    keys = Keys(settings.key_prefix, settings.job_streams)
    factory = RedisFactory(settings, "gateway")
    # No pool health checks: an idle gateway must send no command at all.
    client = factory.commands(health_check_s=0)
    stats = GatewayStats()
    delivery = create_delivery(settings, factory, client, stats)
    try:
        await require_layout(client, keys)
        store = JobStore(client, keys, result_ttl_s=settings.result_ttl_s, breaker=factory.breaker)
        health = Health(client)
        health.extra_checks.append(("Redis (circuit open)", lambda: not factory.breaker.is_open))
        health.extra_checks.append((f"{delivery.mode} delivery", delivery.ready))
        collector = GatewayCollector(
            stats,
            factory,
            delivery.mode,
            watch_count=lambda: delivery.watch_count,
            ready=delivery.ready,
            paused_count=lambda: delivery.paused_count,
            catch_up_backlog=lambda: delivery.catch_up_backlog,
            max_sockets=settings.max_sockets,
        )
        gateway = Gateway(
            settings,
            factory,
            Intake(settings, store),
            health,
            delivery,
            sessions,
            stats,
            registry_with(collector),
            asyncio.get_running_loop(),
        )
        await delivery.start()
        log.info("gateway ready (delivery mode %s)", settings.delivery_mode)
        yield gateway
    finally:
        await sessions.close_all(settings.shutdown_grace_s)
        await delivery.stop()
        await client.aclose()
