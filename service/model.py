"""The service's vocabulary: job ids, statuses, event kinds, error codes and errors."""

from __future__ import annotations

import re
import secrets
from enum import StrEnum
from typing import Final

JOB_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Stream ids are opaque to clients; ours are `<seq>-0`, so a position is also a seq.
STREAM_ID_RE: Final = re.compile(r"(\d{1,19})-(\d{1,19})")


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class EventKind(StrEnum):
    DATA = "data"
    DONE = "done"
    FAILED = "failed"


class ErrorCode(StrEnum):
    """The `code` of a WebSocket `error` frame and of an HTTP error body."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    UNKNOWN_KIND = "unknown_kind"
    TOO_LARGE = "too_large"
    TOO_MANY_WATCHES = "too_many_watches"
    GONE = "gone"
    BUSY = "busy"
    CAPACITY = "capacity"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"  # a bug of the gateway's, met serving one event stream


def new_job_id() -> str:
    """A random id (128 bits) that matches JOB_ID_RE and is unguessable.

    Never one that starts with `-`: a command line would take it for an option.
    """
    while True:
        job = secrets.token_urlsafe(16)
        if job[0] != "-":
            return job


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and JOB_ID_RE.fullmatch(value) is not None


def stream_id(seq: int) -> str:
    return f"{seq}-0"


def seq_of_stream_id(value: str) -> int:
    """The seq a stream id stands for; ValueError for anything that is not a stream id."""
    match = STREAM_ID_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"expected a stream id like '12-0', got {value[:80]!r}")
    return int(match.group(1))


class ServiceError(Exception):
    """An error with a user-facing message and a contract error code."""

    code: ErrorCode = ErrorCode.UNAVAILABLE
    http_status: int = 503

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RedisBusy(ServiceError):
    code = ErrorCode.BUSY


class RedisAtCapacity(ServiceError):
    code = ErrorCode.CAPACITY


class RedisUnavailable(ServiceError):
    code = ErrorCode.UNAVAILABLE
