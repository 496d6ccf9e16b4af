"""A Python client for resultcast: submit jobs over HTTP, watch their events over WebSocket
(or Server-Sent Events: `watch(..., transport="sse")`).

    from service.client import submit, watch

    job = await submit("count", {"n": 5})                 # base: $RESULTCAST_URL or :8000
    async for event in watch(job.job, job.token):
        print(event["seq"], event["data"])

`watch` keeps the service's guarantee for you across reconnects: when the socket drops (a
gateway restarting, a network blip) it reconnects with jittered backoff and watches again from
the last `id` it yielded, and it drops anything it already yielded, so every event comes once,
in `seq` order. It ends after the job's terminal event (`done` or `failed`) and raises
`WatchError` for an error that ends the watch (`gone`, `unauthorized`, ...). Transient errors
(`busy`, `capacity`, `unavailable`) go to `on_error` and the watch goes on.

Only `httpx` and `websockets` are needed (the `client` extra), none of the server's packages.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from service.backoff import retry_delay_s

DEFAULT_BASE = "http://127.0.0.1:8000"
TRANSIENT = frozenset({"busy", "capacity", "unavailable"})
TERMINAL_EVENTS = frozenset({"done", "failed"})
# Close codes after which reconnecting would only be refused again.
FATAL_CLOSES = frozenset({1008, 1009})


class ClientError(Exception):
    """An error the gateway answered, in the contract's shape."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class WatchError(ClientError):
    """The watch ended without its terminal event (`gone`, `unauthorized`, a fatal close,
    or `unreachable`: no gateway answered for `give_up_after_s`)."""


class Unreachable(OSError):
    """No gateway answered at `url`: nothing listens there, a wrong host, a timeout."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the gateway at {url}: {reason}")
        self.url = url
        self.reason = reason


def describe(error: BaseException) -> str:
    """A connection failure in a few words (the innermost cause, which names the errno)."""
    inner = error.__cause__ or error.__context__
    while inner is not None:
        error, inner = inner, inner.__cause__ or inner.__context__
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


@dataclass(frozen=True)
class Submitted:
    job: str
    token: str


def default_base() -> str:
    """The gateway to talk to when none is given: `$RESULTCAST_URL`, else a local one."""
    return os.environ.get("RESULTCAST_URL", DEFAULT_BASE)


def socket_url(base: str) -> str:
    """`http(s)://host:port[/prefix]` -> `ws(s)://host:port[/prefix]/ws`."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


def seq_of(stream_id: str | None) -> int:
    if not stream_id:
        return 0
    head = stream_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


async def submit(
    kind: str,
    payload: dict[str, Any],
    *,
    base: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 10.0,
) -> Submitted:
    """Submit a job; returns its id and watch token. Raises `ClientError` for a refusal and
    `Unreachable` (an `OSError`) when no gateway answers at `base`."""
    base = base or default_base()
    url = base.rstrip("/") + "/jobs"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            reply = await http.post(url, json={"kind": kind, "payload": payload}, headers=headers)
    except httpx.TransportError as e:
        raise Unreachable(url, describe(e)) from e
    try:
        body = reply.json()
    except ValueError:
        body = {}
    if reply.status_code != 202:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise ClientError(
            error.get("code", "http_error"),
            error.get("message", reply.reason_phrase),
            reply.status_code,
        )
    return Submitted(body["job"], body["token"])


def reconnect_delay_s(attempt: int, cap_s: float) -> float:
    """The wait before reconnect number `attempt` (0 first): at least half of a ceiling that
    starts at 0.25 s and doubles, up to `cap_s`, so clients dropped at once return apart."""
    return retry_delay_s(attempt + 1, base_s=0.25, cap_s=cap_s, at_least=0.5)


# WebSocket upgrades refused in a row (an HTTP answer other than 101), after which
# `transport="auto"` moves to Server-Sent Events (a proxy that passes only plain HTTP).
FALLBACK_AFTER = 3


class _Reach:
    """Whether any gateway has answered this watch yet, and giving up when none does.

    Once one has answered, the watch never gives up on reconnecting (a gateway restarting is
    normal); before that, a wrong URL or a gateway that is not running ends it after
    `give_up_after_s` with `WatchError("unreachable", ...)`, naming the URL and the reason.
    """

    def __init__(
        self,
        give_up_after_s: float | None,
        on_connect_error: Callable[[str, str], None] | None,
    ) -> None:
        self.answered = False
        self._since = time.monotonic()
        self._give_up_after_s = give_up_after_s
        self._on_connect_error = on_connect_error

    def failed(self, url: str, reason: str) -> None:
        """A connection attempt to `url` failed; raises once it is time to give up."""
        if self._on_connect_error is not None:
            self._on_connect_error(url, reason)
        limit = self._give_up_after_s
        if not self.answered and limit is not None and time.monotonic() - self._since >= limit:
            raise WatchError(
                "unreachable", f"no gateway answered at {url} for {limit:g} s: {reason}"
            )


class _Position:
    """Where a watch stands: what it yielded last (shared by both transports)."""

    def __init__(self, after: str | None) -> None:
        self.last_id, self.last_seq = after, seq_of(after)

    def fresh(self, frame: dict[str, Any]) -> bool:
        """True for an event not yielded yet (and records it); False for a repeat."""
        if frame["seq"] <= self.last_seq:
            return False
        self.last_seq, self.last_id = frame["seq"], frame["id"]
        return True


def _error(frame: dict[str, Any], on_error: Callable[[ClientError], None] | None) -> None:
    """An error frame: raise if it ends the watch, else tell `on_error`."""
    error = ClientError(frame["code"], frame["message"])
    if frame["code"] not in TRANSIENT:
        raise WatchError(error.code, error.message)
    if on_error is not None:
        on_error(error)


async def watch(
    job: str,
    token: str,
    after: str | None = None,
    *,
    base: str | None = None,
    transport: Literal["ws", "sse", "auto"] = "auto",
    max_backoff_s: float = 10.0,
    on_error: Callable[[ClientError], None] | None = None,
    on_reconnect: Callable[[str | None, float], None] | None = None,
    on_connect_error: Callable[[str, str], None] | None = None,
    give_up_after_s: float | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Every event of `job` after stream id `after` (all when None), live, until it ends.

    `transport`: "ws" (a WebSocket), "sse" (Server-Sent Events over plain HTTP) or "auto" (a
    WebSocket, and SSE once WebSocket connections keep failing to open). `on_reconnect(last_id,
    delay_s)` is called before each reconnect; `on_connect_error(url, reason)` when a
    connection cannot be opened; `on_error` with each transient error the gateway reports (the
    watch goes on by itself). With `give_up_after_s`, a watch that no gateway has answered for
    that long raises `WatchError` with code `unreachable`; once one has answered, it never
    gives up.
    """
    position = _Position(after)
    reach = _Reach(give_up_after_s, on_connect_error)
    base = base or default_base()
    if transport != "sse":
        async for frame in _over_websocket(
            job,
            token,
            position,
            reach,
            base,
            transport == "auto",
            max_backoff_s,
            on_error,
            on_reconnect,
        ):
            yield frame
            if frame["event"] in TERMINAL_EVENTS:
                return
        # Only "auto" gets here: WebSockets kept failing.
    async for frame in _over_sse(
        job, token, position, reach, base, max_backoff_s, on_error, on_reconnect
    ):
        yield frame


async def _over_websocket(  # noqa: PLR0917 - one caller, the arguments of `watch`
    job: str,
    token: str,
    position: _Position,
    reach: _Reach,
    base: str,
    may_fall_back: bool,
    max_backoff_s: float,
    on_error: Callable[[ClientError], None] | None,
    on_reconnect: Callable[[str | None, float], None] | None,
) -> AsyncIterator[dict[str, Any]]:
    attempt = failed_opens = 0
    url = socket_url(base)
    while True:
        try:
            async with websockets.connect(url, open_timeout=10, max_size=None) as ws:
                failed_opens = 0
                reach.answered = True
                request = {"op": "watch", "job": job, "token": token, "after": position.last_id}
                await ws.send(json.dumps(request))
                async for raw in ws:
                    # The backoff starts over only once the gateway answers: one that accepts
                    # and closes at once (at capacity, shutting down) is retried ever slower.
                    attempt = 0
                    frame = json.loads(raw)
                    if frame.get("job") not in (job, None):
                        continue
                    kind = frame.get("type")
                    if kind == "event":
                        if position.fresh(frame):
                            yield frame
                            if frame["event"] in TERMINAL_EVENTS:
                                return
                    elif kind == "error":
                        _error(frame, on_error)
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd is not None else None
            if code in FATAL_CLOSES:
                reason = e.rcvd.reason if e.rcvd is not None else ""
                message = f"the gateway closed the socket ({code}) {reason}".strip()
                raise WatchError("closed", message) from e
        except InvalidURI:
            raise
        except InvalidHandshake as e:
            failed_opens += 1  # something answered HTTP but refused the upgrade
            if may_fall_back and failed_opens >= FALLBACK_AFTER:
                return
            reach.failed(url, f"the WebSocket upgrade was refused: {describe(e)}")
        except (OSError, TimeoutError) as e:
            reach.failed(url, describe(e))  # the gateway is not there (yet): try again
        delay = reconnect_delay_s(attempt, max_backoff_s)
        attempt += 1
        if on_reconnect is not None:
            on_reconnect(position.last_id, delay)
        await asyncio.sleep(delay)


async def _over_sse(  # noqa: PLR0917 - one caller, the arguments of `watch`
    job: str,
    token: str,
    position: _Position,
    reach: _Reach,
    base: str,
    max_backoff_s: float,
    on_error: Callable[[ClientError], None] | None,
    on_reconnect: Callable[[str | None, float], None] | None,
) -> AsyncIterator[dict[str, Any]]:
    attempt = 0
    url = f"{base.rstrip('/')}/jobs/{job}/events"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as http:
        while True:
            headers = {"Last-Event-ID": position.last_id} if position.last_id else {}
            try:
                async with http.stream(
                    "GET", url, params={"token": token}, headers=headers
                ) as reply:
                    reach.answered = True
                    if reply.status_code == 204:
                        return  # the job had ended at or before this position
                    if reply.status_code != 200:
                        body = json.loads(await reply.aread() or b"{}").get("error", {})
                        frame = {
                            "code": body.get("code", "http_error"),
                            "message": body.get("message", reply.reason_phrase),
                        }
                        _error(frame, on_error)  # raises unless transient (503)
                    else:
                        attempt = 0
                        async for kind, data in _sse_messages(reply):
                            frame = json.loads(data)
                            if kind == "error":
                                _error(frame, on_error)
                            elif position.fresh(frame):
                                yield frame
                                if frame["event"] in TERMINAL_EVENTS:
                                    return
            except httpx.TransportError as e:
                # The gateway is not there (yet), or the stream broke: resume.
                reach.failed(url, describe(e))
            delay = reconnect_delay_s(attempt, max_backoff_s)
            attempt += 1
            if on_reconnect is not None:
                on_reconnect(position.last_id, delay)
            await asyncio.sleep(delay)


async def _sse_messages(reply: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) of each message with data, as an EventSource dispatches them."""
    kind, data = "message", list[str]()
    async for line in reply.aiter_lines():
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
