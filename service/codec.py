"""Wire frames, encoded once.

An event frame is built by the emit script in Redis and never re-encoded afterwards: the same
bytes are stored in the job's stream, published as the notification and sent to every client.
It always starts with `{"seq":<n>,` so the gateway can read the seq without parsing the data:

    {"seq":3,"job":"J","id":"3-0","type":"event","event":"data","ts":1732550000000,"data":{...}}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from service.model import ErrorCode

_SEQ_PREFIX = b'{"seq":'
_SEQ_START = len(_SEQ_PREFIX)
# seq (19) + job (64) + id (40) + the fixed keys: the kind is always within this many bytes.
_HEAD_MAX = 220


class FrameError(ValueError):
    """Bytes that are not an event frame."""


def encode(value: Any) -> bytes:
    return orjson.dumps(value)


def decode(data: bytes | str) -> Any:
    return orjson.loads(data)


def seq_of_frame(frame: bytes) -> int:
    """The seq of an event frame, read from its fixed prefix."""
    if not frame.startswith(_SEQ_PREFIX):
        raise FrameError(
            f"expected an event frame starting with {_SEQ_PREFIX!r}, got {frame[:20]!r}"
        )
    end = frame.find(b",", _SEQ_START)
    try:
        return int(frame[_SEQ_START:end])
    except ValueError as e:
        raise FrameError(f"event frame with a malformed seq: {frame[:30]!r}") from e


def ts_of_frame(frame: bytes) -> int:
    """The `ts` (ms) of an event frame, from its fixed head; 0 when there is none."""
    start = frame.find(b',"ts":', 0, _HEAD_MAX)
    if start < 0:
        return 0
    start += 6
    end = frame.find(b",", start)
    try:
        return int(frame[start:end])
    except ValueError:
        return 0


def is_terminal_frame(frame: bytes) -> bool:
    """True for a `done` or `failed` frame; the kind sits in the frame's short fixed head."""
    return frame.find(b'"type":"event","event":"data"', 0, _HEAD_MAX) < 0


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    names = {
        dict: "object",
        list: "array",
        str: "string",
        int: "number",
        float: "number",
        bool: "boolean",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def watching(job: str) -> bytes:
    return encode({"type": "watching", "job": job})


def unwatched(job: str) -> bytes:
    return encode({"type": "unwatched", "job": job})


PONG = encode({"type": "pong"})


def error(code: ErrorCode, message: str, job: str | None = None) -> bytes:
    frame: dict[str, Any] = {"type": "error", "code": code.value, "message": message}
    if job is not None:
        frame["job"] = job
    return encode(frame)


def http_error(code: ErrorCode, message: str) -> bytes:
    return encode({"error": {"code": code.value, "message": message}})


def job_body(job: str, status: str, frames: Iterable[bytes]) -> bytes:
    """The `GET /jobs/{job}` body, with the stored event frames spliced in as they are."""
    head = encode({"job": job, "status": status})[:-1]
    return head + b',"events":[' + b",".join(frames) + b"]}"
