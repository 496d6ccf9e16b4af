"""Job handlers: the built-in kinds, the handler interface, and loading user handlers.

A handler is `async def handler(job: Job) -> Any`: it calls `await job.emit(data)` for each
`data` event and returns the data of its `done` event; raising `JobFailed(message)` ends the job
with a `failed` event carrying that message. A job may run more than once (its worker died); a
handler that can resume should skip what `job.resumed_after` says is already written, as
`count` does. A job runs for at most `JOB_TIMEOUT_S`; `@time_limit(seconds)` gives a handler
less.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from service.codec import FRAME_HEAD_MAX

MAX_COUNT_INTERVAL_MS = 60_000
MAX_COUNT_PAD = 1024 * 1024
MAX_SLEEP_S = 3600.0


class JobFailed(Exception):
    """Raised by a handler to end its job with a `failed` event."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Emit(Protocol):
    async def __call__(self, data: Any) -> None: ...


@dataclass(frozen=True)
class Job:
    """What a handler sees of the job it runs."""

    id: str
    kind: str
    payload: dict[str, Any]
    attempt: int
    # How many events an earlier attempt already wrote (0 on a first run).
    resumed_after: int
    emit: Emit


Handler = Callable[[Job], Awaitable[Any]]
Validator = Callable[[dict[str, Any]], str | None]


def time_limit(seconds: float) -> Callable[[Handler], Handler]:
    """Give a handler a shorter time limit than JOB_TIMEOUT_S (a longer one is not granted)."""

    def mark(handler: Handler) -> Handler:
        handler.timeout_s = seconds  # type: ignore[attr-defined]
        return handler

    return mark


def time_limit_s(handler: Handler, job_timeout_s: float) -> float:
    """How long a job of this handler may run: JOB_TIMEOUT_S, or less if the handler asks."""
    asked = getattr(handler, "timeout_s", None)
    if isinstance(asked, int | float) and 0 < asked < job_timeout_s:
        return float(asked)
    return job_timeout_s


def _int_field(
    payload: dict[str, Any], name: str, low: int, high: int, default: int | None
) -> str | None:
    value = payload.get(name, default)
    if value is None:
        return f"payload.{name} is required"
    if not isinstance(value, int) or isinstance(value, bool):
        return f"payload.{name} must be an integer, got {type(value).__name__}"
    if not low <= value <= high:
        return f"payload.{name} must be between {low} and {high}, got {value}"
    return None


@dataclass(frozen=True)
class Limits:
    """What a job may write: the worker enforces these; intake refuses payloads past them."""

    max_events: int = 1_000_000
    max_event_bytes: int = 1024 * 1024
    max_job_bytes: int = 64 * 1024 * 1024
    # JOB_TIMEOUT_S: a built-in job that would need longer is refused, not run and failed.
    max_run_s: float = 600.0


def validate_count(payload: dict[str, Any], limits: Limits = Limits()) -> str | None:
    problem = (
        _int_field(payload, "n", 0, limits.max_events - 1, None)
        or _int_field(payload, "interval_ms", 0, MAX_COUNT_INTERVAL_MS, 0)
        or _int_field(payload, "size", 0, MAX_COUNT_PAD, 0)
    )
    if problem:
        return problem
    n, size = payload["n"], payload.get("size", 0)
    event = FRAME_HEAD_MAX + len(b'{"i":,"pad":""}') + len(str(n)) + size
    if event > limits.max_event_bytes:
        return (
            f"payload.size: each event would be about {event} bytes, over MAX_EVENT_BYTES "
            f"({limits.max_event_bytes})"
        )
    if n * event > limits.max_job_bytes:
        return (
            f"payload: n x size would store about {n * event} bytes, over MAX_JOB_BYTES "
            f"({limits.max_job_bytes})"
        )
    run_s = n * payload.get("interval_ms", 0) / 1000
    if run_s > limits.max_run_s:
        return (
            f"payload: n x interval_ms would run for {run_s:g} s, over JOB_TIMEOUT_S "
            f"({limits.max_run_s:g})"
        )
    return None


def event_fits(data: Any, limits: Limits) -> str | None:
    """A problem if `data` as one event's data would be over MAX_EVENT_BYTES."""
    size = FRAME_HEAD_MAX + len(orjson.dumps(data))
    if size > limits.max_event_bytes:
        return f"its event would be {size} bytes, over MAX_EVENT_BYTES ({limits.max_event_bytes})"
    return None


def validate_sleep(payload: dict[str, Any], limits: Limits = Limits()) -> str | None:
    seconds = payload.get("seconds")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "payload.seconds must be a number"
    longest = min(MAX_SLEEP_S, limits.max_run_s)
    if not 0 <= seconds <= longest:
        return (
            f"payload.seconds must be between 0 and {longest:g} (a job runs for at most "
            f"JOB_TIMEOUT_S), got {seconds}"
        )
    return None


def validate_fail(payload: dict[str, Any]) -> str | None:
    if not isinstance(payload.get("message"), str):
        return "payload.message must be a string"
    return None


def validate_builtin(kind: str, payload: dict[str, Any], limits: Limits) -> str | None:
    """A problem with a built-in job's payload, limits included; None for other kinds."""
    if kind == "count":
        return validate_count(payload, limits)
    if kind == "echo":  # its done event carries the payload
        problem = event_fits(payload, limits)
        return f"payload: {problem}" if problem else None
    if kind == "fail":
        problem = validate_fail(payload)
        if problem:
            return problem
        problem = event_fits({"message": payload["message"]}, limits)
        return f"payload.message: {problem}" if problem else None
    if kind == "sleep":
        return validate_sleep(payload, limits)
    return None


async def echo(job: Job) -> Any:
    return job.payload


async def count(job: Job) -> Any:
    n = job.payload["n"]
    interval_s = job.payload.get("interval_ms", 0) / 1000
    pad = "x" * job.payload.get("size", 0)
    # Event i has seq i, so a retried job continues after the last event already written.
    for i in range(job.resumed_after + 1, n + 1):
        await job.emit({"i": i, "pad": pad})
        if interval_s:
            await asyncio.sleep(interval_s)
        elif i % 256 == 0:
            await asyncio.sleep(0)  # let other jobs and the flusher run
    return {"count": n}


async def sleep(job: Job) -> Any:
    seconds = job.payload["seconds"]
    await asyncio.sleep(seconds)
    return {"slept": seconds}


async def fail(job: Job) -> Any:
    raise JobFailed(job.payload["message"])


BUILTIN_HANDLERS: dict[str, Handler] = {"echo": echo, "count": count, "sleep": sleep, "fail": fail}


def load_handlers(spec: str | None) -> dict[str, Handler]:
    """Built-in handlers, plus (over them) the mapping named by `module:attr`."""
    handlers = dict(BUILTIN_HANDLERS)
    if not spec:
        return handlers
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--handlers: expected 'module:attr', got {spec!r}")
    try:
        extra = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--handlers: cannot load {spec!r}: {e}") from e
    if not isinstance(extra, Mapping) or not all(
        isinstance(k, str) and callable(v) for k, v in extra.items()
    ):
        raise ValueError(f"--handlers: {spec!r} must be a mapping of kind name to async handler")
    handlers.update(extra)
    return handlers
