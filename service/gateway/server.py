"""Running the gateway under uvicorn, with a bounded graceful shutdown."""

from __future__ import annotations

import asyncio
import math

import uvicorn

from service.config import Settings
from service.gateway.app import create_app
from service.keys import Keys
from service.migrate import require_layout
from service.redis_client import RedisFactory, redis_errors


def uvicorn_config(settings: Settings, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,  # our handlers, with secret redaction
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=None,  # idle sockets must cost nothing; the session has its own timeout
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        proxy_headers=True,
        server_header=False,
    )


async def _preflight(settings: Settings) -> None:
    """Fail with a clear message, before binding a port, when Redis's layout is too old."""
    client = RedisFactory(settings, "gateway").commands()
    try:
        with redis_errors("layout check"):
            await require_layout(client, Keys(settings.key_prefix))
    finally:
        await client.aclose()


def serve(settings: Settings, *, host: str, port: int) -> int:
    settings.require_secret_key()
    asyncio.run(_preflight(settings))
    server = uvicorn.Server(uvicorn_config(settings, host, port))
    server.run()
    return 0 if server.started else 1
