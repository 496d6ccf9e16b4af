"""Client frames of the watch protocol, parsed and checked or refused; and the close codes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson

from service.codec import json_type
from service.model import JOB_ID_RE, seq_of_stream_id


class CloseCode(IntEnum):
    """Why the gateway closes a client's connection (WebSocket close codes, RFC 6455)."""

    # One member per code: an alias would make two reasons for closing indistinguishable
    # (`IDLE is NORMAL`). What differs beside the code (a job that ended may take its time to
    # be read; an idle timeout may not) is said by the caller.
    NORMAL = 1000  # nothing sent or received for IDLE_TIMEOUT_S; an event stream's job ended
    GOING_AWAY = 1001  # the gateway is shutting down
    INVALID_TEXT = 1007  # a text frame that is not UTF-8
    POLICY = 1008  # too many bad frames, an Origin not allowed, a message left unfinished
    TOO_LARGE = 1009  # a frame over MAX_FRAME_BYTES (uvicorn enforces it)
    INTERNAL_ERROR = 1011
    TRY_LATER = 1013  # accepted nothing for SEND_STALL_TIMEOUT_S, or the gateway is full


@dataclass(frozen=True, slots=True)
class WatchOp:
    job: str
    token: str
    after_seq: int


@dataclass(frozen=True, slots=True)
class UnwatchOp:
    job: str


@dataclass(frozen=True, slots=True)
class PingOp:
    pass


ClientOp = WatchOp | UnwatchOp | PingOp
OPS = ("watch", "unwatch", "ping")


class BadFrame(ValueError):
    """A client frame that breaks the protocol; `job` is set when the frame named a valid one."""

    def __init__(self, message: str, job: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.job = job


def _job(frame: dict[str, object]) -> str:
    job = frame.get("job")
    if not isinstance(job, str):
        raise BadFrame(f"field 'job' must be a string, got {json_type(job)}")
    if JOB_ID_RE.fullmatch(job) is None:
        raise BadFrame("field 'job' must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return job


def parse(text: str) -> ClientOp:
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise BadFrame(f"frame is not valid JSON: {e}") from e
    if not isinstance(frame, dict):
        raise BadFrame(f"frame must be a JSON object, got {json_type(frame)}")
    op = frame.get("op")
    if op == "ping":
        return PingOp()
    if op == "unwatch":
        return UnwatchOp(_job(frame))
    if op == "watch":
        job = _job(frame)
        token = frame.get("token")
        if not isinstance(token, str):
            raise BadFrame(f"field 'token' must be a string, got {json_type(token)}", job)
        after = frame.get("after")
        if after is None:
            return WatchOp(job, token, 0)
        if not isinstance(after, str):
            raise BadFrame(
                f"field 'after' must be a stream id string or null, got {json_type(after)}", job
            )
        try:
            return WatchOp(job, token, seq_of_stream_id(after))
        except ValueError as e:
            raise BadFrame(f"field 'after': {e}", job) from e
    if isinstance(op, str):
        raise BadFrame(f"unknown op {op[:32]!r}; expected one of {', '.join(OPS)}")
    raise BadFrame(f"field 'op' must be one of {', '.join(OPS)}, got {json_type(op)}")


def origin_allowed(scope: dict[str, Any], allowed: tuple[str, ...]) -> bool:
    """Whether a WebSocket or an event stream may open, by its `Origin` (ALLOWED_ORIGINS).

    Only browsers send `Origin`, and they always do: a wrong one is refused; none at all
    (the CLI, a backend) cannot be a page of another site, and is admitted."""
    if not allowed:
        return True
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            return value.decode("latin-1") in allowed
    return True
