"""A client the test paces, behind the real outbox: what a WebSocket session is to the hub."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.delivery.hub import Hub
from service.gateway.outbox import Outbox
from service.model import ErrorCode
from service.stats import GatewayStats


class Client:
    """The far end of an outbox: takes at most `window` frames until the test reads them."""

    def __init__(self, window: int) -> None:
        self.frames: asyncio.Queue[bytes] = asyncio.Queue(window)
        self.seen: list[dict[str, Any]] = []

    async def receive(self, frame: bytes) -> None:
        await self.frames.put(frame)

    async def read(self, n: int) -> None:
        for _ in range(n):
            self.seen.append(orjson.loads(await asyncio.wait_for(self.frames.get(), 10)))

    async def read_until(self, predicate: Any) -> None:
        while not predicate(self.seen):
            await self.read(1)

    def seqs(self, job: str) -> list[int]:
        return [f["seq"] for f in self.seen if f.get("job") == job and f["type"] == "event"]


@dataclass(eq=False)
class Watcher:
    """What the gateway's session is to the hub, minus the WebSocket."""

    hub: Hub
    client: Client
    limit_bytes: int
    outbox: Outbox = field(init=False)
    ended: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # watched from after the end
    errors: list[tuple[str, ErrorCode]] = field(default_factory=list)

    def __post_init__(self) -> None:
        async def close(_code: int, _reason: str) -> None:
            pass

        self.outbox = Outbox(
            self.client.receive,
            close,
            limit_bytes=self.limit_bytes,
            stall_timeout_s=60,
            stats=GatewayStats(),
            on_drained=lambda: self.hub.drained(self),
            on_stalled=lambda: None,
        )

    def __hash__(self) -> int:
        return id(self)

    def deliver(self, frame: bytes) -> bool:
        return self.outbox.offer(frame)

    def room(self) -> int:
        return self.outbox.room()

    def watch_failed(self, job: str, code: ErrorCode, message: str) -> None:
        self.errors.append((job, code))

    def watch_ended(self, job: str) -> None:
        self.ended.append(job)

    def watch_finished(self, job: str) -> None:
        self.finished.append(job)
