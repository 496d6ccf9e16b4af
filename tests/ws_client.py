"""A real WebSocket client for tests, with helpers that wait on conditions, never on sleeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

RECV_TIMEOUT_S = 10.0


class Client:
    def __init__(self, connection: ClientConnection) -> None:
        self.ws = connection

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(
            frame if isinstance(frame, str | bytes) else orjson.dumps(frame).decode()
        )

    async def recv(self, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), timeout_s)
        value: dict[str, Any] = orjson.loads(frame)
        return value

    async def watch(self, job: str, token: str, after: str | None = None) -> None:
        await self.send({"op": "watch", "job": job, "token": token, "after": after})

    async def watch_all(
        self, jobs: list[tuple[str, str]], timeout_s: float = 30.0
    ) -> asyncio.Task[dict[str, list[dict[str, Any]]]]:
        """Watch every (job, token); a task collecting each job's frames until it ends."""
        for job, token in jobs:
            await self.watch(job, token)
        return asyncio.create_task(self.events_until_terminal({j for j, _ in jobs}, timeout_s))

    async def events_until_terminal(
        self, jobs: set[str], timeout_s: float = 30.0
    ) -> dict[str, list[dict[str, Any]]]:
        """Every frame per job until each job's terminal event (errors are kept too)."""
        got: dict[str, list[dict[str, Any]]] = {job: [] for job in jobs}
        open_jobs = set(jobs)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while open_jobs:
            frame = await self.recv(max(0.1, deadline - loop.time()))
            job = frame.get("job")
            if job in got:
                got[job].append(frame)
                if frame.get("event") in ("done", "failed") or frame.get("code") == "gone":
                    open_jobs.discard(job)
        return got

    async def closed_with(self, timeout_s: float = RECV_TIMEOUT_S) -> int | None:
        """Read until the server closes; return its close code."""
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout_s)
        return self.ws.close_code


@contextlib.asynccontextmanager
async def connect(base: str, **kwargs: Any) -> AsyncIterator[Client]:
    url = base.replace("http://", "ws://") + "/ws"
    kwargs.setdefault("max_size", None)
    async with websockets.connect(url, **kwargs) as connection:
        yield Client(connection)


async def submit(base: str, kind: str, payload: dict[str, Any]) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=base) as http:
        reply = await http.post("/jobs", json={"kind": kind, "payload": payload})
        assert reply.status_code == 202, reply.text
        body = reply.json()
        return body["job"], body["token"]


def assert_exact(events: list[dict[str, Any]], job: str, n: int, first_seq: int = 1) -> None:
    """Events of a `count` job: every seq once, in order, no gaps, ending with `done`."""
    seqs = [e.get("seq", e) for e in events]
    assert seqs == list(range(first_seq, n + 2)), seqs
    assert all(e["type"] == "event" and e["job"] == job for e in events)
    assert [e["data"]["i"] for e in events[:-1]] == list(range(first_seq, n + 1))
    assert (events[-1]["event"], events[-1]["data"]) == ("done", {"count": n})
    assert [e["id"] for e in events] == [f"{s}-0" for s in seqs]
