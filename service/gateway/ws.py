"""The `/ws` endpoint: a raw ASGI app, so the session talks to uvicorn without extra layers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.gateway.session import CLOSE_POLICY, CLOSE_TRY_LATER, Receive, Send, Session

if TYPE_CHECKING:
    from service.gateway.app import Gateway

log = logging.getLogger(__name__)


class WebSocketEndpoint:
    def __init__(self, gateway: Callable[[], Gateway]) -> None:
        self._gateway = gateway

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        gateway = self._gateway()
        settings, stats = gateway.settings, gateway.stats
        await send({"type": "websocket.accept"})
        session = Session(receive, send, gateway.delivery, settings, stats)
        if settings.allowed_origins and _origin(scope) not in settings.allowed_origins:
            session.close(CLOSE_POLICY, "origin not allowed")
        elif len(gateway.sessions.open) >= settings.max_sockets:
            log.warning("refusing a WebSocket: %d open, the limit", len(gateway.sessions.open))
            session.close(CLOSE_TRY_LATER, "server at capacity, retry later")
        elif gateway.sessions.shutting_down:
            session.close(1001, "server shutting down")
        gateway.sessions.add(session)
        stats.sockets_open += 1
        stats.sockets_total += 1
        try:
            await session.run()
        finally:
            stats.sockets_open -= 1
            gateway.sessions.remove(session)


def _origin(scope: dict[str, Any]) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            return str(value.decode("latin-1"))
    return ""
