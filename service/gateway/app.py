"""The ASGI application: its routes and error answers; the running parts are `running.py`'s,
kept in the Starlette app's state for as long as its lifespan runs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.resources import files
from typing import Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from service.config import Settings
from service.gateway.admin import admin_stats
from service.gateway.errors import HTTPFailure, error_response, service_error_response
from service.gateway.running import Gateway, running_gateway
from service.gateway.sessions import Sessions
from service.gateway.sse import SseEndpoint
from service.gateway.ws import WebSocketEndpoint
from service.metrics import CONTENT_TYPE, render
from service.model import ErrorCode, ServiceError

log = logging.getLogger(__name__)


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


def gateway_of(request: Request) -> Gateway:
    """The running gateway serving `request` (set by the app's lifespan)."""
    gateway: Gateway = request.app.state.gateway
    return gateway


async def post_job(request: Request) -> Response:
    return await gateway_of(request).intake.submit(request)


async def get_job(request: Request) -> Response:
    return await gateway_of(request).intake.read(request)


async def healthz(request: Request) -> Response:
    return await gateway_of(request).health.healthz(request)


async def readyz(request: Request) -> Response:
    return await gateway_of(request).health.readyz(request)


async def admin(request: Request) -> Response:
    return admin_stats(gateway_of(request), request)


async def metrics(request: Request) -> Response:
    return Response(render(gateway_of(request).metrics), media_type=CONTENT_TYPE)


DEMO_PAGE = files("service.gateway").joinpath("static/index.html").read_bytes()


async def index(_request: Request) -> Response:
    return Response(DEMO_PAGE, media_type="text/html; charset=utf-8")


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


def create_app(settings: Settings) -> GatewayApp:
    settings.require_secret_key()
    sessions = Sessions()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running_gateway(settings, sessions) as gateway:
            app.state.gateway = gateway
            try:
                yield
            finally:
                del app.state.gateway

    http = Starlette(
        routes=[
            Route("/jobs", post_job, methods=["POST"]),
            Route("/jobs/{job}", get_job, methods=["GET"]),
            Route("/jobs/{job}/events", SseEndpoint(), methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/stats", admin, methods=["GET"]),
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

    def gateway() -> Gateway:
        running: Gateway = http.state.gateway
        return running

    return GatewayApp(http, WebSocketEndpoint(gateway), sessions, gateway)
