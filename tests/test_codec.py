"""The event frame has one owner: the builder, the emit script and the parser agree."""

from __future__ import annotations

import orjson
import pytest
import redis.asyncio as redis

from service.codec import (
    ENTRY_FIELD,
    FrameError,
    event_frame,
    frame_head,
    frame_ts,
    stored_notice,
    stored_seq,
)
from service.keys import Keys
from service.model import EventKind
from service.publisher import NOTIFY_MAX_BYTES, EmitLimits
from service.scripts import CREATE_JOB, EMIT
from tests.conftest import entries

KEYS = Keys()


async def test_the_emit_script_writes_the_builders_bytes(migrated: redis.Redis) -> None:
    job = "Job_1-x"
    await CREATE_JOB(migrated, [KEYS.meta(job)], ["count", 0, 60_000])
    datas = [b'{"i":1,"pad":"\\u00e9\\"x"}', b"[1,2.5,null]", b'{"message":"boom"}']
    kinds = [EventKind.DATA, EventKind.DATA, EventKind.FAILED]
    args: list[object] = EmitLimits(100, 1 << 20, 64 << 20).argv(job, 60_000)
    for seq, (kind, data) in enumerate(zip(kinds, datas, strict=True), 1):
        args += [seq, kind.value, 1_700_000_000_000 + seq, data.decode()]
    await EMIT(migrated, [KEYS.events(job), KEYS.meta(job), KEYS.channel(job)], args)
    stored = [fields[ENTRY_FIELD] for _, fields in await entries(migrated, KEYS.events(job))]
    built = [
        event_frame(seq, job, kind, 1_700_000_000_000 + seq, data)
        for seq, (kind, data) in enumerate(zip(kinds, datas, strict=True), 1)
    ]
    assert stored == built
    assert orjson.loads(built[0]) == {
        "seq": 1,
        "job": job,
        "id": "1-0",
        "type": "event",
        "event": "data",
        "ts": 1_700_000_000_001,
        "data": {"i": 1, "pad": 'é"x'},
    }


@pytest.mark.parametrize("kind", list(EventKind))
def test_the_head_is_read_whatever_the_key_order(kind: EventKind) -> None:
    canonical = event_frame(7, "J", kind, 123, b'{"a":"\\"event\\":\\"data\\""}')
    value = orjson.loads(canonical)
    reordered = orjson.dumps(dict(reversed(list(value.items()))))
    assert frame_head(canonical) == frame_head(reordered) == (7, kind)
    assert frame_ts(canonical) == frame_ts(reordered) == 123


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"not json",
        b"[1]",
        b'{"type":"pong"}',
        b'{"type":"event","seq":"1","event":"data","ts":1}',
        b'{"type":"event","seq":0,"event":"data","ts":1}',
        b'{"type":"event","seq":true,"event":"data","ts":1}',
        b'{"type":"event","seq":1,"event":"started","ts":1}',
    ],
)
def test_anything_else_is_a_frame_error(frame: bytes) -> None:
    with pytest.raises(FrameError):
        frame_head(frame)


async def test_the_emit_script_announces_a_large_event_with_the_builders_notice(
    migrated: redis.Redis,
) -> None:
    """Past NOTIFY_MAX_BYTES the script publishes the event's position only: the very bytes
    `stored_notice` builds and `stored_seq` reads; the frame itself is stored as usual."""
    job = "Big_1"
    await CREATE_JOB(migrated, [KEYS.meta(job)], ["count", 0, 60_000])
    listener = migrated.pubsub()
    await listener.subscribe(KEYS.channel(job))
    assert (await listener.get_message(timeout=5))["type"] == "subscribe"
    data = b'{"pad":"' + b"x" * NOTIFY_MAX_BYTES + b'"}'
    args: list[object] = EmitLimits(100, 1 << 20, 64 << 20).argv(job, 60_000)
    args += [1, EventKind.DATA.value, 1_700_000_000_001, data.decode()]
    await EMIT(migrated, [KEYS.events(job), KEYS.meta(job), KEYS.channel(job)], args)
    message = await listener.get_message(timeout=5)
    await listener.aclose()
    assert message is not None and message["data"] == stored_notice(1)
    assert stored_seq(message["data"]) == 1
    [(_, fields)] = await entries(migrated, KEYS.events(job))
    assert fields[ENTRY_FIELD] == event_frame(1, job, EventKind.DATA, 1_700_000_000_001, data)
