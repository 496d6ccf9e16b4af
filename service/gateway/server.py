"""Running the gateway under uvicorn, with a bounded graceful shutdown."""

from __future__ import annotations

import asyncio
import math
import socket

import uvicorn

from service.config import Settings
from service.gateway.app import GatewayApp, create_app
from service.gateway.http_protocol import guarded_http_protocol
from service.gateway.sessions import Sessions
from service.gateway.ws_protocol import guarded_ws_protocol
from service.gc_pauses import collect_less_often, freeze_what_startup_made
from service.keys import Keys
from service.memory import releasing_free_memory
from service.migrate import require_layout
from service.redis_client import RedisFactory, redis_errors

LISTEN_BACKLOG = 16384


def uvicorn_config(
    settings: Settings, host: str, port: int, app: GatewayApp | None = None
) -> uvicorn.Config:
    return uvicorn.Config(
        app or create_app(settings),
        host=host,
        port=port,
        log_config=None,  # our handlers, with secret redaction
        # Deadlines and limits on what one connection may hold, below the application.
        http=guarded_http_protocol(settings),
        ws=guarded_ws_protocol(settings),
        ws_max_size=settings.max_frame_bytes,
        # Compression would cost a zlib context per socket (memory) for little gain on
        # small JSON frames; idle sockets must stay cheap.
        ws_per_message_deflate=False,
        ws_ping_interval=None,  # idle sockets must cost nothing; the session has its own timeout
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        proxy_headers=True,
        server_header=False,
        # After a restart every client reconnects at once: a short accept queue drops their
        # SYNs, and each retransmits only after 1, 3, 7 s... (the kernel caps this at
        # net.core.somaxconn).
        backlog=LISTEN_BACKLOG,
    )


async def _preflight(settings: Settings) -> None:
    """Fail with a clear message, before binding a port, when Redis's layout is too old."""
    client = RedisFactory(settings, "gateway").commands()
    try:
        with redis_errors("layout check"):
            await require_layout(client, Keys(settings.key_prefix, settings.job_streams))
    finally:
        await client.aclose()


class GatewayServer(uvicorn.Server):
    """uvicorn, but WebSockets are closed with 1001 before uvicorn's own shutdown.

    Left alone, uvicorn closes open WebSockets with 1012 and then waits for handlers; ours
    send 1001 (going away) through each session's writer, bounded by SHUTDOWN_GRACE_S.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        sessions: Sessions,
        grace_s: float,
        send_buffer_bytes: int = 0,
    ) -> None:
        super().__init__(config)
        self._sessions = sessions
        sessions.count_connections = lambda: len(self.server_state.connections)
        self._grace_s = grace_s
        self._send_buffer_bytes = send_buffer_bytes

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        async with releasing_free_memory():
            await self._serve_listening(sockets)

    async def _serve_listening(self, sockets: list[socket.socket] | None) -> None:
        if sockets is not None or not self._send_buffer_bytes:
            await super().serve(sockets)
            return
        # Accepted connections inherit the listening socket's buffer size: a client that
        # stops reading then holds this much of the kernel's memory, not megabytes.
        listener = self.config.bind_socket()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer_bytes)
            await super().serve([listener])
        finally:
            listener.close()  # uvicorn leaves a socket it was given open if startup fails

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections while the old ones are told to go
        await self._sessions.close_all(self._grace_s)
        await super().shutdown(sockets)


def gateway_server(settings: Settings, host: str, port: int) -> GatewayServer:
    app = create_app(settings)
    return GatewayServer(
        uvicorn_config(settings, host, port, app),
        app.sessions,
        settings.shutdown_grace_s,
        settings.socket_send_buffer_bytes,
    )


def serve(settings: Settings, *, host: str, port: int) -> int:
    settings.require_secret_key()
    asyncio.run(_preflight(settings))
    server = gateway_server(settings, host, port)
    freeze_what_startup_made()
    collect_less_often()
    server.run()
    return 0 if server.started else 1
