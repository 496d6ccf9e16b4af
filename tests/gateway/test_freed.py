"""A connection that ends is freed by reference counting, not left to the cyclic collector.

A gateway serves connections by the thousand: if each left a reference cycle behind (its
session, watches and outbox holding one another's methods), only a full collection would free
them, one long pause every few thousand connections. With the collector off, every object of
an ended WebSocket or event stream must still be gone.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from service.config import DELIVERY_MODES
from service.gateway.outbox import Outbox
from service.gateway.sse import SseStream
from service.gateway.watches import Watches
from service.gateway.ws import WebSocketSession
from service.gateway.ws_protocol import GuardedWebSocketProtocol
from tests.conftest import make_settings, wait_for
from tests.processes import running_gateway, running_worker
from tests.redis_servers import RedisServer
from tests.sse_client import read_events
from tests.ws_client import assert_exact, connect, submit

PER_CONNECTION = (WebSocketSession, Watches, Outbox, GuardedWebSocketProtocol, SseStream)


@pytest.fixture(params=DELIVERY_MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()  # what earlier tests left is not counted
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def alive() -> list[str]:
    """The per-connection objects that exist now (the collector being off, none was freed
    by it)."""
    made = (type(o) for o in gc.get_objects())  # type(), not isinstance: a weak proxy raises
    return [kind.__name__ for kind in made if issubclass(kind, PER_CONNECTION)]


@pytest.mark.usefixtures("migrated")
async def test_ended_connections_are_freed_without_the_collector(
    redis_server: RedisServer, mode: str
) -> None:
    settings = make_settings(redis_server.url, delivery_mode=mode)
    async with running_worker(settings), running_gateway(settings) as base:
        done, done_token = await submit(base, "count", {"n": 20})
        running, running_token = await submit(base, "sleep", {"seconds": 30})
        with collector_off():
            # A watch to the job's end, then the client closes.
            async with connect(base) as ws:
                await ws.watch(done, done_token)
                frames = (await ws.events_until_terminal({done}))[done][1:]
            assert_exact(frames, done, 20)
            # A client that goes while its watch is live (nothing more to deliver to it).
            async with connect(base) as ws:
                await ws.watch(running, running_token)
            # An event stream to the job's end.
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                assert len(await read_events(http, done, done_token)) == 21
            await wait_for(lambda: not alive(), what="every ended connection to be freed")
