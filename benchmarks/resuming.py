"""A client that resumes, for the drop, avalanche and chaos benchmarks: thousands in one
process.

Each `ResumingWatch` watches one job the way the shipped Python client (`service.client`)
does: when its connection drops it reconnects after the same jittered back-off
(`service.client.reconnect_delay_s`, reset once the gateway answers) and watches again with
`after` set to the last id it received, over a WebSocket or an event stream (SSE). Unlike the
shipped client it does not drop repeats: it counts them, since a repeat is the service's
fault. It rides on the lean load clients (`service.bench.wsload`, `sseload`), so the client
does not become the bottleneck being measured; `read_delay_s` makes it a slow reader (it
stops reading for that long after each event).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from service.bench.sseload import SseProtocol
from service.bench.wsload import Received, WsProtocol
from service.client import TERMINAL_EVENTS, reconnect_delay_s

GONE = b'"code":"gone"'


@dataclass
class Resume:
    """One reconnect: when the socket was lost, when the watch was sent again, and when the
    first event it had missed arrived (None when it missed none)."""

    lost_at: float  # time.monotonic()
    watched_at: float = 0.0
    watched_wall_ns: int = 0
    first_missed_at: float | None = None
    first_missed_delay_s: float | None = None  # emit to receipt, for that event


@dataclass
class Tally:
    """What every watch of a run saw; read by the benchmarks' reports."""

    opened: int = 0
    refused: int = 0  # connection attempts that failed (the gateway down, a cut handshake)
    events: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)


class _Socket(WsProtocol):
    """One connection of a watch: hands each event to its watch."""

    def __init__(self, host: str, watch: ResumingWatch) -> None:
        self.received = Received()  # its close codes
        super().__init__(host, "/ws", self.received, keep_seqs=False)
        self._watch = watch

    def _handle(self, payload: bytes) -> None:
        _hand_over(self, self._watch, payload)


class _Stream(SseProtocol):
    """One event stream of a watch (`GET /jobs/{job}/events?after=`)."""

    def __init__(self, host: str, watch: ResumingWatch) -> None:
        self.received = Received()
        after = f"&after={watch.last_id}" if watch.last_id else ""
        path = f"/jobs/{watch.job}/events?token={watch.token}{after}"
        super().__init__(host, path, self.received, keep_seqs=False)
        self._watch = watch

    def _handle(self, payload: bytes) -> None:
        _hand_over(self, self._watch, payload)


def _hand_over(connection: WsProtocol, watch: ResumingWatch, payload: bytes) -> None:
    if payload.startswith(b'{"seq":'):
        watch.event(orjson.loads(payload))
        if watch.read_delay_s and connection.transport is not None and not watch.finished:
            transport = connection.transport
            transport.pause_reading()
            asyncio.get_running_loop().call_later(watch.read_delay_s, _resume, transport)
    elif GONE in payload:
        watch.gone += 1


def _resume(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.resume_reading()


class ResumingWatch:
    def __init__(
        self,
        url: str,
        job: str,
        token: str,
        *,
        tally: Tally,
        max_backoff_s: float = 10.0,
        transport: str = "ws",
        read_delay_s: float = 0.0,
        keep_arrivals: bool = False,
    ) -> None:
        parts = urlsplit(url)
        self.transport = transport
        self.read_delay_s = read_delay_s
        self.gone = 0  # `gone` errors received
        # When each event arrived (time.monotonic()), for the chaos benchmark's recovery times.
        self.arrivals: list[float] | None = [] if keep_arrivals else None
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.job, self.token = job, token
        self.tally = tally
        self.max_backoff_s = max_backoff_s
        self.seqs: list[int] = []  # every event received, repeats included, in arrival order
        self.duplicates = 0
        self.last_id: str | None = None
        self.last_seq = 0
        self.finished = False
        self.connections = 0
        self.resumes: list[Resume] = []
        self.live = asyncio.Event()  # set by each event; the benchmarks clear it to wait
        self._attempt = 0
        self._socket: _Socket | _Stream | None = None
        self.opened_at = 0.0  # time.monotonic() the current connection opened
        self.mark = float("inf")  # see `back_at`
        self.back_at: float | None = None  # the first event on a connection opened after mark

    def event(self, frame: dict[str, object]) -> None:
        now = time.monotonic()
        self.tally.events += 1
        self._attempt = 0  # the gateway answers: the back-off starts over
        if self.back_at is None and self.opened_at > self.mark:
            self.back_at = now
        seq = frame["seq"]
        assert isinstance(seq, int)
        self.seqs.append(seq)
        if self.arrivals is not None:
            self.arrivals.append(now)
        if seq <= self.last_seq:
            self.duplicates += 1
            return
        resume = self.resumes[-1] if self.resumes else None
        if resume is not None and resume.first_missed_at is None and resume.watched_at:
            data = frame.get("data")
            emitted_ns = data.get("t_ns") if isinstance(data, dict) else None
            if isinstance(emitted_ns, int) and emitted_ns < resume.watched_wall_ns:
                resume.first_missed_at = now
                resume.first_missed_delay_s = (time.time_ns() - emitted_ns) / 1e9
        self.last_seq, self.last_id = seq, str(frame["id"])
        if frame["event"] in TERMINAL_EVENTS:
            self.finished = True
            if self._socket is not None and self._socket.transport is not None:
                self._socket.transport.close()  # done: leave, as the shipped client does
        self.live.set()

    def cut(self) -> None:
        """Drop the current connection from the client's side (as a network fault would)."""
        if self._socket is not None and self._socket.transport is not None:
            self._socket.transport.abort()

    async def run(self, deadline: float) -> None:
        """Watch until the terminal event, reconnecting after every drop; give up at
        `deadline` (time.monotonic())."""
        loop = asyncio.get_running_loop()
        while not self.finished and time.monotonic() < deadline:
            address = f"{self.host}:{self.port}"
            socket = self._socket = (
                _Socket(address, self) if self.transport == "ws" else _Stream(address, self)
            )
            try:
                await loop.create_connection(socket.itself, self.host, self.port)
                await socket.open
            except (OSError, ConnectionError):
                self.tally.refused += 1
                await self._back_off()
                continue
            self.connections += 1
            self.tally.opened += 1
            self.opened_at = time.monotonic()
            if self.resumes and not self.resumes[-1].watched_at:
                self.resumes[-1].watched_at = time.monotonic()
                self.resumes[-1].watched_wall_ns = time.time_ns()
            if self.transport == "ws":
                socket.send(
                    {"op": "watch", "job": self.job, "token": self.token, "after": self.last_id}
                )
            await socket.closed
            for code in socket.received.close_codes:
                self.tally.close_codes[code] = self.tally.close_codes.get(code, 0) + 1
            if self.finished:
                break
            if not self.resumes or self.resumes[-1].watched_at:
                self.resumes.append(Resume(lost_at=time.monotonic()))
            await self._back_off()
        self._socket = None

    async def _back_off(self) -> None:
        delay = reconnect_delay_s(self._attempt, self.max_backoff_s)
        self._attempt += 1
        await asyncio.sleep(delay)

    def exact(self, last_seq: int) -> bool:
        """Every event 1..last_seq once, in order."""
        return self.seqs == list(range(1, last_seq + 1))
