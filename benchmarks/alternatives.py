"""resultcast against the alternatives, in one run: encode/broadcaster and python-socketio.

    python -m benchmarks.alternatives [--rounds 3] [--sockets 1000,100] [--rr-rounds 100]
                                      [--burst 50] [--idle-s 20] [--systems a,b] [--no-pin]
                                      [--json out.json]

Each system is a server process under uvicorn on one Redis of its own (fresh for every
round): resultcast's gateway (pubsub mode; `resultcast-asgi` the same with
WEBSOCKET_SEND=asgi, uvicorn's own send path), an encode/broadcaster app (Redis backend) and a
python-socketio app (`AsyncRedisManager`), both in benchmarks/peers/. The same lean clients
(one socket watching one job each) and the same raw pipelined writer serve all three; what
one event costs Redis differs by design (resultcast stores it in the job's stream and
publishes it; the others only publish).

Per round and system, for each socket count: delivered events/s with frames written
round-robin (one event of every job per round, --rr-rounds rounds, at most 20 rounds ahead
of the clients) and in per-job bursts (--burst events of one job, then the next), both
scaled up for fewer sockets so that every phase delivers as many events, and the server's
CPU per delivered event; at the largest count also idle memory per socket (the
server's RSS growth over its empty state) and Redis commands per minute while every socket
sits idle. Every socket must get every event once, in order. Systems alternate within each
round; ratios are per round, and the summary gives medians. With two cores or more the
server runs on a core of its own and everything else on the others (`--no-pin` to share):
its CPU per event is then its own, whatever the load generator costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as redis

from benchmarks.raw_writer import RESULTCAST_LINES, RawWriter, frame, resp, resultcast_event
from service.bench.harness import (
    CommandCount,
    Pinning,
    Progress,
    Stack,
    caught_up,
    private_redis,
    proc_stats,
    raise_open_files_limit,
    running_stack,
    until,
)
from service.bench.wsload import Received, WsProtocol, client_frame, open_sockets
from service.processes import free_port, spawn, stop

WINDOW = 20  # rounds (or bursts) the writer may be ahead of the slowest client


@dataclass
class Server:
    base: str
    pid: int
    redis_url: str


# -- the clients -------------------------------------------------------------------------------


class SocketIoProtocol(WsProtocol):
    """Engine.IO 4 / Socket.IO 5 over a WebSocket: connect to the default namespace, join one
    job's room (`watch`, acknowledged), answer pings, count `event` messages."""

    def __init__(self, host: str, sink: Received, job: str) -> None:
        super().__init__(host, "/socket.io/?EIO=4&transport=websocket", sink, keep_seqs=True)
        self.job = job
        self.joined = False

    def _send_text(self, text: bytes) -> None:
        if self.transport is not None:
            self.transport.write(client_frame(text))

    def _handle(self, payload: bytes) -> None:
        sink = self._sink
        sink.frames += 1
        if payload.startswith(b'42["event",'):
            event = orjson.loads(payload[2:])[1]
            sink.events += 1
            self.seqs.setdefault(event["job"], []).append(event["seq"])
        elif payload == b"2":
            self._send_text(b"3")  # pong
        elif payload.startswith(b"0{"):
            self._send_text(b"40")  # connect to the default namespace
        elif payload.startswith(b"40"):
            self._send_text(b"420" + orjson.dumps(["watch", self.job]))
        elif payload.startswith(b"430"):
            self.joined = True


async def open_socketio(base: str, jobs: list[str], sink: Received) -> list[WsProtocol]:
    loop = asyncio.get_running_loop()
    host, port = "127.0.0.1", int(base.rsplit(":", 1)[1])
    sockets: list[SocketIoProtocol] = []
    for start in range(0, len(jobs), 200):
        batch = [SocketIoProtocol(f"{host}:{port}", sink, job) for job in jobs[start : start + 200]]
        for protocol in batch:
            await loop.create_connection(protocol.itself, host, port)
        await asyncio.gather(*(p.open for p in batch))
        sockets += batch
    await until(lambda: all(s.joined for s in sockets), 120)
    return list(sockets)


async def open_watching(base: str, jobs: list[tuple[str, str]], sink: Received) -> list[WsProtocol]:
    """resultcast's and broadcaster's protocol: a `watch` op, answered by `watching`."""
    sockets = await open_sockets(base, len(jobs), sink, keep_seqs=True)
    for ws, (job, token) in zip(sockets, jobs, strict=True):
        ws.send({"op": "watch", "job": job, "token": token})
    await until(lambda: sink.frames >= len(jobs), 120)
    return sockets


# -- the systems -------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    start: Callable[[str], Any]  # redis URL -> async context manager yielding a Server
    jobs: Callable[[Server, int], Awaitable[list[tuple[str, str]]]]
    open: Callable[[Server, list[tuple[str, str]], Received], Awaitable[list[WsProtocol]]]
    commands: Callable[[str, int], bytes]
    lines_per_event: int
    # Channels Redis must hold a subscriber for before events are written: a peer's
    # subscribe returns before Redis has it (what it publishes sooner is lost, by design).
    channels: Callable[[list[str]], list[str]] = lambda _jobs: []


@asynccontextmanager
async def resultcast_server(redis_url: str, send: str = "fast") -> AsyncIterator[Server]:
    env = {"MAX_SOCKETS": "20000", "WEBSOCKET_SEND": send}
    async with running_stack(redis_url, "pubsub", env) as stack:
        yield Server(stack.base, stack.gateway_pid, redis_url)


async def resultcast_jobs(server: Server, count: int) -> list[tuple[str, str]]:
    """Jobs no worker runs (this process writes their events), with their tokens."""
    stack = Stack([server.base], server.redis_url, None, {}, [])
    return await stack.submit_many("echo", {}, count)


async def resultcast_open(
    server: Server, jobs: list[tuple[str, str]], sink: Received
) -> list[WsProtocol]:
    sockets = await open_watching(server.base, jobs, sink)
    await caught_up(server.base)
    return sockets


@asynccontextmanager
async def uvicorn_server(app: str, redis_url: str) -> AsyncIterator[Server]:
    """A peer app under uvicorn with the gateway's WebSocket settings (no per-message
    compression, no WebSocket-level pings: Socket.IO keeps its own heartbeat)."""
    port = free_port()
    # fmt: off
    command = [
        sys.executable, "-m", "uvicorn", app, "--port", str(port), "--log-level", "warning",
        "--no-access-log", "--ws", "websockets-sansio", "--ws-per-message-deflate", "false",
        "--ws-max-size", "1048576", "--ws-ping-interval", "0",
    ]
    # fmt: on
    process = spawn(
        command,
        dict(os.environ, REDIS_URL=redis_url),
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            for _ in range(400):
                if process.poll() is not None:
                    raise RuntimeError(f"{app} exited at start")
                try:
                    await http.get("/")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        yield Server(base, process.pid, redis_url)
    finally:
        stop(process)


async def named_jobs(_server: Server, count: int) -> list[tuple[str, str]]:
    return [(f"job{i}", "") for i in range(count)]


def broadcaster_event(job: str, seq: int) -> bytes:
    return resp(b"PUBLISH", b"peer:" + job.encode(), frame(job, seq))


def socketio_event(job: str, seq: int) -> bytes:
    """What `AsyncRedisManager.emit("event", data, room=job)` publishes."""
    message = {
        "method": "emit",
        "event": "event",
        "data": [orjson.loads(frame(job, seq))],
        "binary": False,
        "namespace": "/",
        "room": job,
        "skip_sid": None,
        "callback": None,
        "host_id": "benchmark",
    }
    return resp(b"PUBLISH", b"socketio", orjson.dumps(message))


async def broadcaster_open(
    server: Server, jobs: list[tuple[str, str]], sink: Received
) -> list[WsProtocol]:
    return await open_watching(server.base, jobs, sink)


async def socketio_open(
    server: Server, jobs: list[tuple[str, str]], sink: Received
) -> list[WsProtocol]:
    return await open_socketio(server.base, [job for job, _ in jobs], sink)


SYSTEMS = [
    System(
        "resultcast",
        resultcast_server,
        resultcast_jobs,
        resultcast_open,
        resultcast_event,
        RESULTCAST_LINES,
    ),
    # The same gateway sending through uvicorn's own WebSocket code: the fast path's baseline.
    System(
        "resultcast-asgi",
        lambda url: resultcast_server(url, "asgi"),
        resultcast_jobs,
        resultcast_open,
        resultcast_event,
        RESULTCAST_LINES,
    ),
    System(
        "broadcaster",
        lambda url: uvicorn_server("benchmarks.peers.broadcaster_app:app", url),
        named_jobs,
        broadcaster_open,
        broadcaster_event,
        1,
        lambda jobs: [f"peer:{job}" for job in jobs],
    ),
    System(
        "socketio",
        lambda url: uvicorn_server("benchmarks.peers.socketio_app:app", url),
        named_jobs,
        socketio_open,
        socketio_event,
        1,
        lambda _jobs: ["socketio"],
    ),
]


# -- the phases --------------------------------------------------------------------------------


async def deliver(
    server: Server,
    system: System,
    sink: Received,
    batches: list[list[tuple[str, int]]],
) -> dict[str, float]:
    """Write `batches` (each one pipeline), at most WINDOW batches ahead of the clients; a
    system that loses events is reported with what it lost, not waited for."""
    writer = await RawWriter.connect(server.redis_url, system.commands, system.lines_per_event)
    before = sink.events
    total = sum(len(b) for b in batches)
    _, cpu_before = proc_stats(server.pid)
    started = time.perf_counter()
    written = 0
    sizes = [len(b) for b in batches]
    complete = True
    for i, batch in enumerate(batches):
        await writer.write(batch)
        written += len(batch)
        behind = sum(sizes[max(0, i - WINDOW + 1) : i + 1])
        if not await _received(sink, before + written - behind):
            complete = False
            break
    complete = complete and await _received(sink, before + total)
    seconds = time.perf_counter() - started
    _, cpu_after = proc_stats(server.pid)
    writer.close()
    delivered = sink.events - before
    return {
        "events_per_s": round(delivered / seconds),
        "cpu_us_per_event": round((cpu_after - cpu_before) / max(1, delivered) * 1e6, 1),
        "lost": 0 if complete else written - delivered,
    }


async def _received(sink: Received, events: int, stall_s: float = 10.0) -> bool:
    """Until the clients have `events` in all; False once nothing arrived for `stall_s`
    (what was written by then is lost)."""
    seen, since = sink.events, time.monotonic()
    while sink.events < events:
        if sink.events != seen:
            seen, since = sink.events, time.monotonic()
        elif time.monotonic() - since > stall_s:
            return False
        await asyncio.sleep(0.0005)
    return True


async def measure(
    system: System, args: argparse.Namespace, progress: Progress, pinning: Pinning | None
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with private_redis(None) as url, system.start(url) as server:
        if pinning is not None:
            pinning.server_side(server.pid)
        empty_rss, _ = proc_stats(server.pid)
        for count in args.sockets:
            jobs = await system.jobs(server, count)
            names = [job for job, _ in jobs]
            sink = Received()
            sockets = await system.open(server, jobs, sink)
            await subscribed(url, system.channels(names))
            if count == max(args.sockets):
                figures["idle"] = await idle(server, count, empty_rss, args.idle_s)
            progress.show(0.5, f"{system.name} {count} sockets")
            # Fewer sockets get more rounds (longer bursts): every phase delivers as many
            # events, so each figure rests on as much CPU time.
            scale = max(args.sockets) // count
            rounds, burst = args.rr_rounds * scale, args.burst * scale
            rr = [[(job, seq) for job in names] for seq in range(1, rounds + 1)]
            first = rounds + 1
            bursts = [[(job, seq) for seq in range(first, first + burst)] for job in names]
            figures[f"rr_{count}"] = await deliver(server, system, sink, rr)
            figures[f"burst_{count}"] = await deliver(server, system, sink, bursts)
            expected = list(range(1, first + burst))
            figures[f"exact_{count}"] = all(
                s.seqs and all(v == expected for v in s.seqs.values()) for s in sockets
            )
            for s in sockets:
                if s.transport is not None:
                    s.transport.close()
    return figures


async def subscribed(redis_url: str, channels: list[str]) -> None:
    """Until Redis has a subscriber on each of `channels`."""
    client = redis.Redis.from_url(redis_url, protocol=2)
    try:
        for start in range(0, len(channels), 500):
            batch = channels[start : start + 500]
            for _ in range(1200):
                counts = dict(await client.pubsub_numsub(*batch))
                if all(counts.get(c.encode(), 0) >= 1 for c in batch):
                    break
                await asyncio.sleep(0.05)
            else:
                raise TimeoutError("the server did not subscribe its clients' channels")
    finally:
        await client.aclose()


async def idle(server: Server, count: int, empty_rss: float, seconds: float) -> dict[str, float]:
    await asyncio.sleep(1.0)  # let the server settle after the setup burst
    rss, _ = proc_stats(server.pid)
    meter = await CommandCount(Stack([server.base], server.redis_url, None, {}, [])).begin()
    await asyncio.sleep(seconds)  # the measured idle interval
    commands = await meter.since()
    return {
        "rss_kib_per_socket": round((rss - empty_rss) * 1024 / count, 1),
        "redis_commands_per_min": round(commands / seconds * 60, 1),
    }


RATIO_FIGURES = ("events_per_s", "cpu_us_per_event")


def ratios(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Each resultcast variant over each other system ("a/b"), per figure: delivered
    events/s and server CPU per event, the median of the per-round ratios."""
    names = list(rounds[0])
    ours = [n for n in names if n.startswith("resultcast")]
    pairs = [
        (a, b)
        for a in ours
        for b in names
        if a != b and (b not in ours or ours.index(b) > ours.index(a))
    ]
    out: dict[str, dict[str, float]] = {}
    for a, b in pairs:
        per_figure: dict[str, list[float]] = {}
        for r in rounds:
            for key, value in r[a].items():
                if not key.startswith(("rr_", "burst_")):
                    continue
                other = r[b][key]
                if value["lost"] or other["lost"]:
                    continue  # a run that lost events has no rate to compare
                for figure in RATIO_FIGURES:
                    if other[figure]:
                        per_figure.setdefault(f"{key}.{figure}", []).append(
                            value[figure] / other[figure]
                        )
        out[f"{a}/{b}"] = {k: round(statistics.median(v), 2) for k, v in per_figure.items()}
    return out


def medians(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in rounds[0]:
        values: dict[str, list[float]] = {}
        for r in rounds:
            for key, value in r[name].items():
                if isinstance(value, dict):
                    for sub, v in value.items():
                        values.setdefault(f"{key}.{sub}", []).append(v)
        out[name] = {k: round(statistics.median(v), 1) for k, v in values.items()}
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sockets", default="1000,100")
    parser.add_argument("--rr-rounds", type=int, default=100)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--systems", default=",".join(s.name for s in SYSTEMS))
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the server on a core of its own, the clients and Redis on the others",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.sockets = [int(n) for n in args.sockets.split(",")]
    chosen = [s for s in SYSTEMS if s.name in args.systems.split(",")]
    raise_open_files_limit()
    pinning = Pinning.split() if args.pin else None
    if pinning is not None:
        pinning.load_side()
    rounds: list[dict[str, dict[str, Any]]] = []
    progress = Progress("alternatives")
    for i in range(args.rounds):
        # Alternate the order, so no system always runs first (or last) on a warm machine.
        order = chosen if i % 2 == 0 else chosen[::-1]
        results = {}
        for system in order:
            results[system.name] = await measure(system, args, progress, pinning)
            print(f"round {i + 1} {system.name}: {results[system.name]}", flush=True)
        rounds.append(results)
    progress.done()
    summary = {"medians": medians(rounds), "ratios": ratios(rounds)}
    print(json.dumps(summary, indent=1))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"args": settings, "rounds": rounds} | summary, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
