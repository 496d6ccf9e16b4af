"""encode/broadcaster with its Redis backend, as its README shows: one Pub/Sub connection per
process, a channel per job; a WebSocket client sends `{"op": "watch", "job": ...}` and gets
every message published on that job's channel, as published.

    REDIS_URL=redis://... uvicorn benchmarks.peers.broadcaster_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from broadcaster import Broadcast
from broadcaster._base import Unsubscribed
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

broadcast = Broadcast(os.environ["REDIS_URL"])


def channel(job: str) -> str:
    return f"peer:{job}"


async def watch(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        request = orjson.loads(await websocket.receive_text())
        job = str(request["job"])
        async with broadcast.subscribe(channel(job)) as subscriber:
            await websocket.send_text(orjson.dumps({"type": "watching", "job": job}).decode())
            while True:
                event = await subscriber.get()
                await websocket.send_text(event.message)
    except (WebSocketDisconnect, Unsubscribed):
        pass


@asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    await broadcast.connect()
    try:
        # The Redis backend's listener stops for good when it starts reading before its first
        # channel is registered (two clients subscribing at once are enough), and then nobody
        # hears anything. One subscription held for the app's life keeps it listening, the
        # workaround discussed in encode/broadcaster#91 and #133.
        async with broadcast.subscribe(channel("_listening")):
            yield
    finally:
        await broadcast.disconnect()


app = Starlette(routes=[WebSocketRoute("/ws", watch)], lifespan=lifespan)
