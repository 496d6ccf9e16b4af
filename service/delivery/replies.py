"""Replies read straight off a subscribed connection, with no coroutine per reply.

A subscribed connection receives one reply per published message. redis-py's
`Connection.read_response` costs, for each, three coroutines, a timeout branch and a host
string for its error messages, measured at a tenth of a busy gateway's CPU. Here the replies
already received are taken from the connection's hiredis reader in a plain loop, and its
stream is awaited only when none is left. redis-py still connects, authenticates and
subscribes; without hiredis (its own parser), each reply is read the ordinary way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser

__all__ = ["NOT_ENOUGH_DATA", "Replies"]

READ_SIZE = 65536


class Replies:
    """`next()` is the next reply already received, or NOT_ENOUGH_DATA: then `await
    receive()`. An error reply is raised (redis-py's ResponseError); a closed connection
    raises ConnectionError."""

    def __init__(self, connection: redis.Connection) -> None:
        parser = getattr(connection, "_parser", None)
        reader = getattr(parser, "_reader", None)
        stream = getattr(parser, "_stream", None)
        self._connection = connection
        self._held: Any = NOT_ENOUGH_DATA  # without hiredis: the reply last read
        self.direct = False
        if (
            isinstance(parser, _AsyncHiredisParser)
            and reader is not None
            and isinstance(stream, asyncio.StreamReader)
        ):
            self.direct = True
            self._gets, self._feed, self._stream = reader.gets, reader.feed, stream

    def next(self) -> Any:
        if not self.direct:
            reply, self._held = self._held, NOT_ENOUGH_DATA
        else:
            reply = self._gets()
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def receive(self) -> None:
        if not self.direct:
            self._held = await self._connection.read_response(disconnect_on_error=False)
            return
        data = await self._stream.read(READ_SIZE)
        if not data:
            raise ConnectionError("Redis closed the connection")
        self._feed(data)
