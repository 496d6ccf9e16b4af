"""A real WebSocket client for tests, with helpers that wait on conditions, never on sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import socket
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

    async def read_throttled(
        self, jobs: set[str], bytes_per_s: float, timeout_s: float = 60.0
    ) -> dict[str, list[dict[str, Any]]]:
        """Like `events_until_terminal`, but taking frames no faster than `bytes_per_s`:
        a client on a slow link (the gateway sees it through TCP back-pressure)."""
        got: dict[str, list[dict[str, Any]]] = {job: [] for job in jobs}
        open_jobs = set(jobs)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout_s
        taken = 0
        while open_jobs:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.1, deadline - loop.time()))
            taken += len(raw)
            frame: dict[str, Any] = orjson.loads(raw)
            job = frame.get("job")
            if job in got:
                got[job].append(frame)
                if frame.get("event") in ("done", "failed") or frame.get("code") == "gone":
                    open_jobs.discard(job)
            # The rate limit itself, not a wait for a condition.
            ahead_s = start + taken / bytes_per_s - loop.time()
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)
        return got

    def abort(self) -> None:
        """Drop the connection without a closing handshake (a tab killed, a phone gone)."""
        self.ws.transport.abort()

    async def closed_with(self, timeout_s: float = RECV_TIMEOUT_S) -> int | None:
        """Read until the server closes; return its close code."""
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout_s)
        return self.ws.close_code


@contextlib.asynccontextmanager
async def connect(
    base: str, *, small_buffers: bool = False, **kwargs: Any
) -> AsyncIterator[Client]:
    """A client; `small_buffers` keeps the kernel from buffering much for it, so that a
    client that stops reading makes the gateway's sends wait after a few KiB, as a client
    on a slow link or a stuck browser tab does."""
    url = base.replace("http://", "ws://") + "/ws"
    kwargs.setdefault("max_size", None)
    if small_buffers:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        kwargs.update(sock=sock, max_queue=1)
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
