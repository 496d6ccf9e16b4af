"""Jobs in Redis: submitting one, and reading a job's status and stored events.

Reads are idempotent and retried on transient failures; the one write that is not (adding the
job to the intake stream) is sent exactly once, after the job's meta hash exists, so a failed
submission leaves at worst an orphan meta hash that expires with the result TTL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from service.breaker import CircuitBreaker
from service.codec import ENTRY_FIELD, META_SEQ
from service.keys import Keys
from service.model import JobStatus, new_job_id, stream_id
from service.redis_client import is_topology_change, redis_errors, retrying
from service.scripts import CREATE_JOB, READ_PAGE


@dataclass(frozen=True)
class JobSnapshot:
    """A job's status and a page of its events, read in one atomic call."""

    status: JobStatus
    last_seq: int
    frames: list[bytes]
    more: bool  # the page stopped at a limit (events or bytes): ask again after its last


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        result_ttl_s: int,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._ttl_ms = result_ttl_s * 1000
        self._breaker = breaker
        self._reader = EventReader(client, keys, breaker)

    async def submit(self, kind: str, payload: bytes) -> str:
        """Create a job and queue it for the workers; returns its id."""
        job = new_job_id()
        now = time.time_ns() // 1_000_000
        with redis_errors("submit", self._breaker):
            await retrying(
                lambda: CREATE_JOB(self._client, [self._keys.meta(job)], [kind, now, self._ttl_ms])
            )
            stream = self._keys.job_stream(job)
            await self._client.xadd(stream, {"job": job, "kind": kind, "payload": payload})
        return job

    async def snapshot(
        self, job: str, after_seq: int, *, max_events: int, max_bytes: int
    ) -> JobSnapshot | None:
        """The job's status and its events after `after_seq`, at most `max_events` and
        `max_bytes` of them (at least one, whatever its size); None if the job is unknown."""
        (page,) = await self._reader.pages([PageRequest(job, after_seq, max_bytes)], max_events)
        if not page.exists:
            return None
        return JobSnapshot(JobStatus(page.status), page.last_seq, page.frames, page.more)

    async def position(self, job: str) -> tuple[JobStatus, int] | None:
        """The job's status and last seq (one HMGET); None if the job is unknown."""
        with redis_errors("read job", self._breaker):
            status, seq = await retrying(
                lambda: self._client.hmget(self._keys.meta(job), ["status", "seq"])
            )
        if status is None:
            return None
        return JobStatus(status.decode() if isinstance(status, bytes) else status), int(seq or 0)

    async def registered_kinds(self) -> set[str]:
        """Kinds that some worker has registered (built-in kinds are always known)."""
        with redis_errors("read kinds", self._breaker):
            names = await retrying(lambda: self._client.hkeys(self._keys.kinds))
        return {name.decode() if isinstance(name, bytes) else name for name in names}


# What one catch-up call may read in all (past its first page): bounds how long it holds
# Redis and how large its reply is, whatever the number of jobs in it.
CALL_BUDGET_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class PageRequest:
    """Read `job`'s events after `after_seq`: at most `max_bytes` of frames (and at least one)."""

    job: str
    after_seq: int
    max_bytes: int


@dataclass(frozen=True)
class Page:
    """One job's stored events after a position, with where the job stands."""

    job: str
    exists: bool
    last_seq: int
    frames: list[bytes]
    finished: bool = False  # the job has its terminal event (at `last_seq`)
    status: str = ""  # as the job's meta hash says (queued, running, done, failed)
    more: bool = False  # the page stopped at a limit: more may follow `frames`
    unread: bool = False  # not read this time (the call's byte budget ran out): ask again
    # The stored frame at each position asked to be checked (None: no entry there).
    stored: dict[int, bytes | None] = field(default_factory=dict)


class PageReader(Protocol):
    """Where catch-up reads stored events: Redis (`EventReader`), or memory in tests."""

    async def pages(
        self,
        requests: list[PageRequest],
        count: int,
        checks: Mapping[str, list[int]] | None = None,
    ) -> list[Page]:
        """A page per request: at most `count` frames and `max_bytes` bytes, at least one
        frame when there is one; `checks` also reads the entries at those seqs of those jobs."""


class EventReader:
    """Reads pages of events for many jobs in one script call (catch-up).

    Pages are bounded in bytes by the script (`read_page.lua`), not only in events, so that
    what a catch-up reads for a client never exceeds what that client's queue can take; and
    one call reads no more than about `CALL_BUDGET_BYTES` in all (jobs past it are `unread`).
    """

    def __init__(
        self, client: redis.Redis, keys: Keys, breaker: CircuitBreaker | None = None
    ) -> None:
        self._client = client
        self._keys = keys
        self._breaker = breaker

    async def pages(
        self,
        requests: list[PageRequest],
        count: int,
        checks: Mapping[str, list[int]] | None = None,
    ) -> list[Page]:
        """A page per request; `checks` also reads the entries at those seqs of those jobs."""
        checks = checks or {}
        check_list = [(job, seq) for job, seqs in checks.items() for seq in seqs if seq > 0]
        keys = self._keys

        def read_with(script_args: Callable[[list[str], list[Any]], tuple[Any, ...]]) -> Any:
            async def read() -> list[Any]:
                pipe = self._client.pipeline(transaction=False)
                if requests:
                    script_keys, args = self._page_call(requests, count, keys_in_argv=False)
                    pipe.execute_command(*script_args(script_keys, args))
                for job, seq in check_list:
                    pipe.xrange(keys.events(job), stream_id(seq), stream_id(seq))
                return list(await pipe.execute())

            return read

        with redis_errors("catch-up read", self._breaker):
            if isinstance(self._client, redis.RedisCluster):
                replies = await self._read_per_node(self._client, requests, count, check_list)
            else:
                try:
                    replies = await retrying(read_with(READ_PAGE.evalsha_args), attempts=2)
                except NoScriptError:
                    # Redis lost its script cache (a restart, a failover, SCRIPT FLUSH): EVAL
                    # runs the script and caches it again for the next read.
                    replies = await retrying(read_with(READ_PAGE.eval_args), attempts=2)
        answers = replies.pop(0) if requests else []
        stored: dict[str, dict[int, bytes | None]] = {}
        for (job, seq), entries in zip(check_list, replies, strict=True):
            stored.setdefault(job, {})[seq] = entries[0][1][ENTRY_FIELD] if entries else None
        pages = []
        for r, answer in zip(requests, answers, strict=True):
            if answer is None:  # the call's byte budget ran out before this job
                pages.append(Page(r.job, exists=True, last_seq=0, frames=[], unread=True))
                continue
            seq, status, more, *frames = answer
            pages.append(
                Page(
                    r.job,
                    exists=status is not None,
                    last_seq=int(seq or 0),
                    frames=frames,
                    finished=status in (b"done", b"failed"),
                    status=status.decode() if status else "",
                    more=bool(more),
                    stored=stored.get(r.job, {}),
                )
            )
        return pages

    def _page_call(
        self, requests: list[PageRequest], count: int, *, keys_in_argv: bool
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of one `read_page.lua` call for these requests."""
        keys = self._keys
        script_keys: list[str] = []
        args: list[Any] = [count, CALL_BUDGET_BYTES]
        for r in requests:
            job_keys = [keys.events(r.job), keys.meta(r.job)]
            if keys_in_argv:
                args += job_keys
            else:
                script_keys += job_keys
            args += [stream_id(r.after_seq), max(1, r.max_bytes)]
        return script_keys, args

    async def _read_per_node(
        self,
        cluster: redis.RedisCluster,
        requests: list[PageRequest],
        count: int,
        check_list: list[tuple[str, int]],
    ) -> list[Any]:
        """The same replies as one pipelined call, read from a Redis Cluster: one script call
        per primary (its jobs' keys span many slots, which the script's flags allow on one
        node), all primaries at once, and the checks routed by key."""
        await cluster.initialize()
        try:
            return await self._read_nodes(cluster, requests, count, check_list)
        except Exception as e:
            if not is_topology_change(e):
                raise
            # A slot moved since the client last read the slot map: read it again, and the
            # pages from where the jobs live now.
            await cluster.nodes_manager.initialize()
            return await self._read_nodes(cluster, requests, count, check_list)

    async def _read_nodes(
        self,
        cluster: redis.RedisCluster,
        requests: list[PageRequest],
        count: int,
        check_list: list[tuple[str, int]],
    ) -> list[Any]:
        keys = self._keys
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i, r in enumerate(requests):
            node = cluster.get_node_from_key(keys.events(r.job))
            if node is None:
                raise RedisConnectionError(f"no cluster node serves job {r.job}'s slot")
            groups.setdefault(node.name, (node, []))[1].append(i)

        async def call(node: Any, indices: list[int]) -> list[Any]:
            # No KEYS: a node's jobs span slots (see read_page.lua).
            script_keys, args = self._page_call(
                [requests[i] for i in indices], count, keys_in_argv=True
            )
            try:
                command = READ_PAGE.evalsha_args(script_keys, args)
                reply = await cluster.execute_command(*command, target_nodes=node)
            except NoScriptError:
                command = READ_PAGE.eval_args(script_keys, args)
                reply = await cluster.execute_command(*command, target_nodes=node)
            return list(reply)

        answers: list[Any] = [None] * len(requests)
        replies = await asyncio.gather(*(call(node, ix) for node, ix in groups.values()))
        for (_, indices), reply in zip(groups.values(), replies, strict=True):
            for i, answer in zip(indices, reply, strict=True):
                answers[i] = answer
        checks = await asyncio.gather(
            *(
                cluster.xrange(keys.events(job), stream_id(seq), stream_id(seq))
                for job, seq in check_list
            )
        )
        return [answers, *checks] if requests else list(checks)


def store_event(pipe: redis.client.Pipeline, keys: Keys, job: str, seq: int, frame: bytes) -> None:
    """Queue on `pipe` what the emit script leaves in Redis for event `seq` of `job`, without
    its notification: the stream entry and the meta hash's last seq. For tools and tests that
    write a job's history by hand (what a gateway misses while its subscriber is down)."""
    pipe.xadd(keys.events(job), {ENTRY_FIELD: frame}, id=stream_id(seq))
    pipe.hset(keys.meta(job), META_SEQ, seq)
