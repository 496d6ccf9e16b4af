"""The Lua scripts, loaded once and called by SHA.

`SCRIPT FLUSH`, a restart or a failover empties Redis's script cache; a call that meets
`NOSCRIPT` falls back to `EVAL`, which runs the script and caches it again, so the next call is
back to sending only the SHA.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import redis.asyncio as redis
from redis.exceptions import NoScriptError


@dataclass(frozen=True)
class Script:
    name: str
    source: str = field(repr=False)
    sha: str

    @classmethod
    def load(cls, name: str) -> Script:
        source = files(__package__).joinpath(f"{name}.lua").read_text()
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())

    async def __call__(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self.sha, len(keys), *keys, *args
            )
        except NoScriptError:
            return await client.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", self.source, len(keys), *keys, *args
            )

    def evalsha_args(self, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def eval_args(self, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
        return ("EVAL", self.source, len(keys), *keys, *args)


EMIT = Script.load("emit")
START_JOB = Script.load("start_job")
CREATE_JOB = Script.load("create_job")
LEASE = Script.load("lease")
READ_PAGE = Script.load("read_page")
