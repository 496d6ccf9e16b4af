"""The event frame has one owner: the builder, the emit script and the parser agree."""

from __future__ import annotations

import orjson
import pytest
import redis.asyncio as redis

from service.codec import FrameError, FrameHead, event_frame, frame_head, frame_ts
from service.keys import Keys
from service.model import EventKind
from service.publisher import EmitLimits
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
    stored = [fields[b"f"] for _, fields in await entries(migrated, KEYS.events(job))]
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
    expected = FrameHead(7, kind)
    assert frame_head(canonical) == frame_head(reordered) == expected
    assert frame_ts(canonical) == frame_ts(reordered) == 123
    assert expected.terminal is (kind is not EventKind.DATA)


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
