"""`GET /admin/stats`: what this gateway holds live, for an operator, behind `ADMIN_KEY`.

It reads only what the process holds (counters, the hub's feeds, the live source's state,
the Redis identity last seen), so a call costs no Redis command, like `/metrics`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.gateway.bearer import bearer_matches
from service.gateway.errors import HTTPFailure
from service.gateway.running import Gateway
from service.model import ErrorCode
from service.server_identity import as_text

BUSIEST_JOBS = 20
STARTED = time.monotonic()


def admin_stats(gateway: Gateway, request: Request) -> Response:
    settings = gateway.settings
    if not settings.admin_key:
        raise HTTPFailure(404, ErrorCode.NOT_FOUND, "not found")
    if not bearer_matches(request, [settings.admin_key]):
        raise HTTPFailure(
            401, ErrorCode.UNAUTHORIZED, "the admin key is required: Authorization: Bearer <key>"
        )
    stats, identity = gateway.stats, gateway.factory.identity
    body: dict[str, Any] = {
        "gateway": {
            "pid": os.getpid(),
            "mode": settings.delivery_mode,
            "redis_cluster": settings.redis_cluster,
            "uptime_s": round(time.monotonic() - STARTED, 1),
        },
        "connections": {
            "websocket": stats.sockets_open,
            "sse": stats.sse_open,
            "max_sockets": settings.max_sockets,
            "shutting_down": gateway.sessions.shutting_down,
        },
        **gateway.delivery.snapshot(BUSIEST_JOBS),
        "redis": {
            "circuit_open": gateway.factory.breaker.is_open,
            "run_id": as_text(identity.run_id) if identity else None,
            "replication_id": as_text(identity.replication_id) if identity else None,
        },
    }
    return Response(orjson.dumps(body), media_type="application/json")
