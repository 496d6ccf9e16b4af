"""A WebSocket's protocol objects, copied from a prototype instead of constructed anew.

uvicorn's WebSocket protocol and websockets' `ServerProtocol` are built per connection by
constructors whose work comes out the same for every connection of a server, or is replaced
at once: two logger lookups (a lock each), an `asyncio.Queue` (the gateway's protocol puts an
`Inbox` in its place) and a UUID drawn from the kernel's random source (a system call) that
only websockets' debug log shows. Measured: about a tenth of the gateway's CPU per connection.

A `Prototype` is made once per server by the real constructors. Each connection then gets a
copy of its attributes, with new objects for those that are the connection's own (`FRESH`,
`FRESH_CONN`). Whether a copy is safe is checked when the prototype is made: every other
attribute must be immutable, or an object every connection of the server shares (its config,
app, state, loop, loggers, the sets of connections and tasks, the default headers, the
extension factories). An attribute that is neither means the installed uvicorn or websockets
is not the one this was written for: then nothing is copied, and each connection is built by
the constructors, as before (a warning says so, once per server).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

log = logging.getLogger(__name__)

# Each connection's own, made new for it (the rest of uvicorn's protocol is copied).
FRESH = frozenset({"queue", "writable", "conn", "frames"})
# websockets' `ServerProtocol`'s own, made new for it.
FRESH_CONN = frozenset({"id", "reader", "events", "writes", "parser", "extensions"})
# The server's settings for every connection, never changed by one.
SHARED_CONN = frozenset({"origins", "available_extensions", "available_subprotocols"})
IMMUTABLE = (type(None), bool, int, float, str, bytes, enum.Enum, uuid.UUID)

# Connection ids for websockets' logs: unique in the process, from one random start.
_ids = itertools.count(int.from_bytes(os.urandom(8), "big") << 64)


@dataclass(frozen=True, slots=True)
class Prototype:
    """The attributes of a server's WebSocket protocol and of its `ServerProtocol` that every
    connection of that server starts with; `server` is what they were made for."""

    server: tuple[Any, ...]  # config, connections, app_state, loop (compared by identity)
    protocol: dict[str, Any]
    conn: dict[str, Any]
    copyable: bool = True  # False: the constructors build every connection's

    @classmethod
    def of(cls, made: WebSocketsSansIOProtocol) -> Prototype:
        """The prototype of `made` (just built by the constructors); not `copyable` when one
        of its attributes is not known to be safe to share between connections."""
        shared = {
            id(made.config),
            id(made.app),
            id(made.app_state),
            id(made.loop),
            id(made.connections),
            id(made.tasks),
            id(made.default_headers),
        }
        protocol = {k: v for k, v in vars(made).items() if k not in FRESH}
        conn = {k: v for k, v in vars(made.conn).items() if k not in FRESH_CONN}
        unknown = [
            name
            for name, value in (*protocol.items(), *conn.items())
            if not _shareable(value, shared) and name not in SHARED_CONN
        ]
        missing = (FRESH - vars(made).keys()) | (FRESH_CONN - vars(made.conn).keys())
        server = (made.config, made.connections, made.app_state, made.loop)
        if unknown or missing:
            log.warning(
                "building each WebSocket's protocol with its constructors: attributes %s of the"
                " installed uvicorn or websockets are not known to this version of the gateway",
                sorted(unknown) + sorted(missing),
            )
            return cls(server, {}, {}, copyable=False)
        return cls(server, protocol, conn)

    def made_for(self, config: Any, server_state: Any, app_state: Any, loop: Any) -> bool:
        """Whether this is the prototype of that server's connections (once per connection:
        four comparisons, no loop)."""
        made = self.server
        return (
            made[0] is config
            and made[1] is server_state.connections
            and made[2] is app_state
            and made[3] is loop
        )

    def fill(self, protocol: WebSocketsSansIOProtocol, queue: Any) -> None:
        """Give `protocol` (made without its constructor) what the constructor would, with
        `queue` as its receive queue."""
        vars(protocol).update(self.protocol)
        protocol.queue = queue
        protocol.writable = writable = asyncio.Event()
        writable.set()
        protocol.frames = []
        protocol.conn = self.new_conn()

    def new_conn(self) -> ServerProtocol:
        """websockets' protocol of a new connection, waiting for its upgrade request."""
        conn = ServerProtocol.__new__(ServerProtocol)
        vars(conn).update(self.conn)
        conn.id = uuid.UUID(int=next(_ids) % 2**128)
        conn.reader = StreamReader()
        conn.events = []
        conn.writes = []
        conn.extensions = []
        conn.parser = conn.parse()
        next(conn.parser)
        return conn


def _shareable(value: Any, shared: set[int]) -> bool:
    if isinstance(value, IMMUTABLE) or id(value) in shared:
        return True
    if isinstance(value, tuple):
        return all(_shareable(item, shared) for item in value)
    return isinstance(value, logging.Logger | logging.LoggerAdapter)
