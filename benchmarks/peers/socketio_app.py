"""python-socketio with `AsyncRedisManager`, as its documentation shows: a client joins its
job's room (`watch`, acknowledged) and gets every `event` emitted to that room by any process
(an emitter publishes on the manager's one Redis channel; every server process reads all).

    REDIS_URL=redis://... uvicorn benchmarks.peers.socketio_app:app
"""

from __future__ import annotations

import os

import socketio

manager = socketio.AsyncRedisManager(os.environ["REDIS_URL"])
sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, cors_allowed_origins=[])


async def watch(sid: str, job: str) -> bool:
    await sio.enter_room(sid, str(job))
    return True


sio.on("watch", handler=watch)


app = socketio.ASGIApp(sio)
