"""Wire frames, encoded once; this module owns the event frame's shape.

An event frame is built by the emit script in Redis and never re-encoded afterwards: the same
bytes are stored in the job's stream, published as the notification and sent to every client.
`event_frame` builds exactly those bytes (a test holds the script to it, byte for byte):

    {"seq":3,"job":"J","id":"3-0","type":"event","event":"data","ts":1732550000000,"data":{...}}

`frame_head` reads what the gateway needs (seq and kind) from the fixed head of such a frame
without parsing its data; a frame whose head is not in that shape (another key order, a
hand-made frame) is parsed whole, so the answer never depends on key order.

A notification carries the whole frame only up to a size (`publisher.NOTIFY_MAX_BYTES`); a
larger event is announced by its position alone, `{"type":"stored","seq":N}`, and gateways
read it from the stream. `stored_notice` builds that, `stored_seq` reads it.

In the job's stream, event `seq` is the entry `model.stream_id(seq)` (`<seq>-0`) whose field
`ENTRY_FIELD`, holds the frame; the job's meta hash keeps the last seq in `META_SEQ`. The emit
script writes them so (tests hold it to these, and to `stored_notice`); every other writer and
reader of a stream goes through these names (`streams.store_event` writes an event as the
script does, for tools and tests).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

from service.model import ErrorCode, EventKind

_HEAD = re.compile(
    rb'\{"seq":(\d{1,19}),"job":"[A-Za-z0-9_-]{1,64}","id":"\d{1,19}-0",'
    rb'"type":"event","event":"(data|done|failed)","ts":'
)
_TS = re.compile(rb',"ts":(\d{1,19}),')
_KINDS = {kind.value.encode(): kind for kind in EventKind}
EVENT_PREFIX = b'{"seq":'
STORED_PREFIX = b'{"type":"stored","seq":'
# A stream entry's one field, holding the frame; the meta hash's field of the last seq.
ENTRY_FIELD = b"f"
META_SEQ = "seq"


class FrameError(ValueError):
    """Bytes that are not an event frame."""


# What the hub needs of a frame, seq and kind: a plain tuple, made for every frame delivered
# (a NamedTuple's constructor and a property cost 0.35 µs more per frame).
FrameHead = tuple[int, EventKind]


def encode(value: Any) -> bytes:
    return orjson.dumps(value)


def decode(data: bytes | str) -> Any:
    return orjson.loads(data)


def event_frame(seq: int, job: str, kind: EventKind, ts_ms: int, data_json: bytes) -> bytes:
    """The event frame, as the emit script writes it (`data_json`: the data, JSON-encoded)."""
    head = (
        f'{{"seq":{seq},"job":"{job}","id":"{seq}-0","type":"event",'
        f'"event":"{kind.value}","ts":{ts_ms},"data":'
    )
    return head.encode() + data_json + b"}"


# The longest head (and closing brace) an event frame can have: for size checks before writing.
FRAME_HEAD_MAX = len(event_frame(10**19 - 1, "x" * 64, EventKind.FAILED, 10**19 - 1, b""))


def frame_head(frame: bytes) -> FrameHead:
    """Seq and kind of an event frame; FrameError for anything else."""
    match = _HEAD.match(frame)
    if match is not None:
        seq, kind = match.groups()
        return int(seq), _KINDS[kind]
    value = _parse_event(frame)
    return value["seq"], EventKind(value["event"])


def frame_ts(frame: bytes) -> int:
    """The event's timestamp (ms), for latency figures; FrameError for anything else."""
    match = _TS.search(frame, 0, 240)
    if match is not None and frame.startswith(EVENT_PREFIX):
        return int(match[1])
    return int(_parse_event(frame)["ts"])


def _parse_event(frame: bytes) -> dict[str, Any]:
    """The whole frame, checked: for frames whose head is not in the builder's shape."""
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError as e:
        raise FrameError(f"an event frame must be JSON, got {frame[:40]!r}") from e
    if not isinstance(value, dict) or value.get("type") != "event":
        raise FrameError(f"expected an event frame, got {frame[:40]!r}")
    seq, kind, ts = value.get("seq"), value.get("event"), value.get("ts", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise FrameError(f"event frame with a malformed seq: {frame[:40]!r}")
    if kind not in ("data", "done", "failed") or not isinstance(ts, int):
        raise FrameError(f"event frame with a malformed event or ts: {frame[:60]!r}")
    return value


def stored_notice(seq: int) -> bytes:
    """The notification of an event too large to publish: its position only."""
    return STORED_PREFIX + b"%d}" % seq


def stored_seq(notice: bytes) -> int | None:
    """The seq a stored-event notice announces; None for anything else."""
    if not notice.startswith(STORED_PREFIX) or not notice.endswith(b"}"):
        return None
    digits = notice[len(STORED_PREFIX) : -1]
    return int(digits) if digits.isdigit() and len(digits) < 20 else None


def seq_of_frame(frame: bytes) -> int:
    return frame_head(frame)[0]


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


def job_body(job: str, status: str, frames: Iterable[bytes], *, more: bool = False) -> bytes:
    """The `GET /jobs/{job}` body, with the stored event frames spliced in as they are;
    `"more": true` when the page stopped at a limit (ask again with `after` = its last id)."""
    head = encode({"job": job, "status": status})[:-1]
    tail = b'],"more":true}' if more else b"]}"
    return head + b',"events":[' + b",".join(frames) + tail


# -- Server-Sent Events ------------------------------------------------------------------------

SSE_KEEPALIVE = b": keepalive\n\n"
SSE_RETRY = b"retry: 2000\n\n"  # the browser's reconnect delay; also sends the headers at once


def _sse_data(frame: bytes) -> bytes:
    # JSON may hold line breaks between tokens (data written by a producer as it likes):
    # each line is its own `data:` field, which the client joins back with newlines.
    if b"\n" in frame or b"\r" in frame:
        frame = frame.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\ndata: ")
    return b"data: " + frame + b"\n\n"


def sse_message(frame: bytes) -> bytes:
    """One SSE message for a frame the gateway sends: an event (`id:` its stream id, `event:`
    its kind) or an error (`event: error`); the data is the frame as a WebSocket gets it."""
    if frame.startswith(EVENT_PREFIX):
        seq, kind = frame_head(frame)
        return b"id: %d-0\nevent: %s\n%s" % (seq, kind.value.encode(), _sse_data(frame))
    return b"event: error\n" + _sse_data(frame)
