"""The Starlette application: routes, and the resources that live as long as it does."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, cast

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from service.config import Settings
from service.delivery import Delivery, create_delivery
from service.gateway.errors import HTTPFailure, error_response, service_error_response
from service.gateway.health import Health
from service.gateway.jobs import Intake
from service.gateway.sessions import Sessions
from service.gateway.sse import SseEndpoint
from service.gateway.ws import WebSocketEndpoint
from service.keys import Keys
from service.metrics import CONTENT_TYPE, GatewayCollector, registry_with, render
from service.migrate import require_layout
from service.model import ErrorCode, ServiceError
from service.redis_client import RedisFactory
from service.stats import GatewayStats
from service.streams import JobStore

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything one gateway process holds; built in the lifespan, gone after it."""

    settings: Settings
    factory: RedisFactory
    intake: Intake
    health: Health
    delivery: Delivery
    sessions: Sessions
    stats: GatewayStats
    metrics: CollectorRegistry


class GatewayApp:
    """The ASGI app: `/ws` goes straight to the WebSocket endpoint, the rest to Starlette.

    A WebSocket lives for hours, and every layer it passes through keeps a coroutine frame
    alive that long; skipping Starlette's router and middleware for `/ws` keeps an idle socket
    a few KiB smaller, which adds up over tens of thousands of sockets.
    """

    def __init__(
        self,
        http: Starlette,
        websocket: WebSocketEndpoint,
        sessions: Sessions,
        gateway: Callable[[], Gateway],
    ) -> None:
        self.http = http
        self.websocket = websocket
        self.sessions = sessions
        self.gateway = gateway
        """The running gateway's parts (while the lifespan runs), for an app that embeds it."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Mounted under a path of another app, `/ws` is relative to the mount (`root_path`).
        if scope["type"] == "websocket" and _route_path(scope) == "/ws":
            await self.websocket(scope, receive, send)
        else:
            await self.http(scope, receive, send)

    def lifespan(self, _app: object = None) -> AbstractAsyncContextManager[None]:
        """The gateway's resources (Redis clients, subscriber, hub) for as long as the block
        runs: for a host app that mounts the gateway, whose own lifespan must start them
        (Starlette and FastAPI do not run a mounted app's lifespan)."""
        return cast(AbstractAsyncContextManager[None], self.http.router.lifespan_context(self.http))


def _route_path(scope: Any) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def create_app(settings: Settings) -> GatewayApp:
    settings.require_secret_key()
    keys = Keys(settings.key_prefix, settings.job_streams)
    state: dict[str, Gateway] = {}
    sessions = Sessions()

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        factory = RedisFactory(settings, "gateway")
        # No pool health checks: an idle gateway must send no command at all.
        client = factory.commands(health_check_s=0)
        stats = GatewayStats()
        delivery = create_delivery(settings, factory, client, stats)
        try:
            await require_layout(client, keys)
            store = JobStore(
                client, keys, result_ttl_s=settings.result_ttl_s, breaker=factory.breaker
            )
            health = Health(client)
            health.extra_checks.append(
                ("Redis (circuit open)", lambda: not factory.breaker.is_open)
            )
            health.extra_checks.append((f"{delivery.mode} delivery", delivery.ready))
            intake = Intake(settings, store)
            collector = GatewayCollector(
                stats,
                factory,
                delivery.mode,
                watch_count=lambda: delivery.watch_count,
                ready=delivery.ready,
                paused_count=lambda: delivery.paused_count,
                catch_up_backlog=lambda: delivery.catch_up_backlog,
            )
            state["gateway"] = Gateway(
                settings,
                factory,
                intake,
                health,
                delivery,
                sessions,
                stats,
                registry_with(collector),
            )
            await delivery.start()
            log.info("gateway ready (delivery mode %s)", settings.delivery_mode)
            yield
        finally:
            await sessions.close_all(settings.shutdown_grace_s)
            await delivery.stop()
            state.clear()
            await client.aclose()

    def gateway() -> Gateway:
        return state["gateway"]

    async def post_job(request: Request) -> Response:
        return await gateway().intake.submit(request)

    async def get_job(request: Request) -> Response:
        return await gateway().intake.read(request)

    async def healthz(request: Request) -> Response:
        return await gateway().health.healthz(request)

    async def readyz(request: Request) -> Response:
        return await gateway().health.readyz(request)

    demo_page = files("service.gateway").joinpath("static/index.html").read_bytes()

    async def index(_request: Request) -> Response:
        return Response(demo_page, media_type="text/html; charset=utf-8")

    async def metrics(_request: Request) -> Response:
        return Response(render(gateway().metrics), media_type=CONTENT_TYPE)

    async def on_failure(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPFailure)
        return error_response(exc.status, exc.code, exc.message)

    async def on_service_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return service_error_response(exc)

    async def on_http_exception(_request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        codes = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.BAD_REQUEST}
        detail = getattr(exc, "detail", "") or "error"
        code = codes.get(status, ErrorCode.BAD_REQUEST)
        return error_response(status, code, str(detail), getattr(exc, "headers", None))

    async def on_unexpected(_request: Request, exc: Exception) -> Response:
        log.error("unexpected error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return error_response(500, ErrorCode.UNAVAILABLE, "internal error")

    from starlette.exceptions import HTTPException

    http = Starlette(
        routes=[
            Route("/jobs", post_job, methods=["POST"]),
            Route("/jobs/{job}", get_job, methods=["GET"]),
            Route("/jobs/{job}/events", SseEndpoint(gateway), methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/", index, methods=["GET"]),
            # The browser client (resultcast.js) and the demo page's files.
            Mount("/static", StaticFiles(packages=[("service.gateway", "static")]), name="static"),
        ],
        lifespan=lifespan,
        exception_handlers={
            HTTPFailure: on_failure,
            ServiceError: on_service_error,
            HTTPException: on_http_exception,
            Exception: on_unexpected,
        },
    )
    # No 307 to the slash-less path: every answer keeps the contract's error shape.
    http.router.redirect_slashes = False
    return GatewayApp(http, WebSocketEndpoint(gateway), sessions, gateway)
