"""A small Server-Sent Events reader for tests, over httpx's streaming responses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass
class Message:
    event: str
    id: str | None
    data: Any
    comment: str | None = None  # a comment line (`: keepalive`), when that is all it was


async def messages(response: httpx.Response) -> AsyncIterator[Message]:
    """Each message (and each comment) as it arrives, until the response ends."""
    fields: dict[str, list[str]] = {}
    comment: str | None = None
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:  # as EventSource: no data, no message (`retry:` alone)
                yield Message(
                    fields.get("event", ["message"])[-1],
                    fields.get("id", [None])[-1],
                    orjson.loads("\n".join(fields["data"])),
                )
            elif comment is not None:
                yield Message("comment", None, None, comment)
            fields, comment = {}, None
        elif line.startswith(":"):
            comment = line[1:].strip()
        else:
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))


async def read_events(
    http: httpx.AsyncClient,
    job: str,
    token: str,
    *,
    last_event_id: str | None = None,
    after: str | None = None,
    stop_after: int | None = None,
) -> list[Message]:
    """The event and error messages of one stream, until it ends (or `stop_after` events)."""
    params = {"token": token} | ({"after": after} if after else {})
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    got: list[Message] = []
    async with http.stream("GET", f"/jobs/{job}/events", params=params, headers=headers) as r:
        assert r.status_code == 200, (r.status_code, await r.aread())
        assert r.headers["content-type"].startswith("text/event-stream")
        async for message in messages(r):
            if message.event == "comment":
                continue
            got.append(message)
            if stop_after is not None and sum(m.event != "error" for m in got) >= stop_after:
                break
    return got
