"""Faults at random, together: a seeded chaos run over the whole stack.

    python -m benchmarks.chaos [--seed N] [--duration-s 600] [--clients 1000] [--cluster]
                               [--fault-every-s 6] [--mode pubsub] [--out DIR]
                               [--json out.json] [--plot docs/chaos.png]

The stack: two gateway processes behind a proxy that can cut every connection through it
(`cutting_proxy.py`, round robin), two worker processes, a producer process
(`chaos_producer.py`, writing jobs through `service.producer`), and Redis: one server with
`appendonly yes` and `appendfsync always`, or with `--cluster` a local Redis Cluster of three
primaries with a replica each.

The load: `--clients` resuming clients (`resuming.py`) for `--duration-s`; each watches one
job to its end, then takes another. One in ten watches over SSE, one in twenty WebSocket
clients reads slowly (it stops reading for a second after each event), one in ten jobs is the
producer's; the rest are the built-in `count` kind. Events are 100 B to 2 KB, one job in ten
8 to 64 KB.

The faults, drawn from the seed (the same seed replays the same schedule), at random moments
and free to overlap: a gateway SIGKILLed or SIGTERMed (and started again), a worker SIGKILLed
(started again; its jobs are claimed after JOB_VISIBILITY_S), the producer SIGKILLed mid-job
(started again; each job goes on after `resumed_after`), the subscriber connections killed
(`CLIENT KILL TYPE pubsub`), Redis frozen (SIGSTOP) for 0.2 to 3 s, Redis restarted (it
reloads its append-only file), every client connection cut at the proxy; with `--cluster`
also a primary failed over (`CLUSTER FAILOVER` on its replica) and a watched job's slot
migrated to another primary. Faults stop for the last fifth of the run.

Checked at the end, from what every client recorded: every job ended (`done` or `failed`),
every client got every event of its job exactly once and in order, no `gone`, and which ERROR
lines the processes logged (each either explained by a fault kind that happened, listed in
`EXPLAINED`, or counted as unexplained); each process's memory against its baseline.
Reported: faults by kind, events checked, lost / duplicated / out of order, the time from
each fault's end to every client that was waiting receiving again (p50 / p99 / max per kind),
and a timeline plot of delivered events/s with the faults marked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import redis.asyncio as redis

from benchmarks.cutting_proxy import CuttingProxy
from benchmarks.network_drops import summary_ms
from benchmarks.resuming import ResumingWatch, Tally
from service.bench.harness import Progress, proc_stats, raise_open_files_limit, running_stack
from service.config import DELIVERY_MODES, Settings
from service.keys import Keys
from service.local_redis import LocalCluster, RedisServer
from service.memory import TRIM_INTERVAL_S
from service.processes import SERVICE, spawn, stop
from service.producer import AsyncProducer

KEYS = Keys()
T = TypeVar("T")
SINGLE_FAULTS = (
    "gateway_kill",
    "gateway_term",
    "worker_kill",
    "producer_kill",
    "subscriber_kill",
    "redis_freeze",
    "redis_restart",
    "proxy_cut",
)
CLUSTER_FAULTS = (
    *(kind for kind in SINGLE_FAULTS if kind != "redis_restart"),
    "primary_failover",
    "slot_migration",
)
SINGLE_REDIS = "one server, appendfsync always"
CLUSTER_REDIS = "cluster (3 primaries + 3 replicas)"
# Settings of the run that differ from the defaults, and why.
CHAOS_ENV = {
    # A killed worker's jobs are claimed this soon (default 30 s), so that they finish
    # within a short run; the figure for worker kills is bounded by it.
    "JOB_VISIBILITY_S": "10",
    # Slow readers reach flow control (pause, catch up) with events of 8-64 KB.
    "MAX_SEND_QUEUE_BYTES": str(256 * 1024),
    "SHUTDOWN_GRACE_S": "2",
}
# ERROR lines a fault explains: a pattern of the line's message, and the fault kinds.
EXPLAINED: dict[str, tuple[str, ...]] = {
    # Redis down (a restart reloading a large append-only file) for longer than the
    # producer's lease (10 s): the lease lapsed, so the writer stops and the job is opened
    # again, going on after what was written.
    r"this writer's lease was lost": ("redis_restart", "redis_freeze"),
    # redis-py's cluster client drops the node objects a topology refresh replaces without
    # closing them; asyncio reports each when it is collected (the tests silence the same
    # ResourceWarning: tests/cluster/conftest.py).
    r"Unclosed ClusterNode object": ("primary_failover", "slot_migration", "redis_freeze"),
}
LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$")


@dataclass(frozen=True)
class Fault:
    at_s: float  # from the start of the load
    kind: str
    target: int  # which gateway, worker or node: an index drawn from the seed
    hold_s: float  # how long it lasts (a freeze) or the process stays down


def schedule(seed: int, duration_s: float, every_s: float, kinds: tuple[str, ...]) -> list[Fault]:
    """The faults of a run: a Poisson process of mean gap `every_s` from 5 s in until four
    fifths of the run, each of a kind, target and length drawn from the same seed."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    at = 5.0
    while True:
        at += rng.expovariate(1 / every_s)
        if at > duration_s * 0.8:
            return faults
        kind, target, hold = rng.choice(kinds), rng.randrange(1 << 16), rng.uniform(0.2, 3.0)
        faults.append(Fault(round(at, 2), kind, target, round(hold, 2)))


@dataclass
class Happened:
    """A fault as it was injected: when (time.monotonic()) it began and ended."""

    fault: Fault
    began: float
    ended: float = 0.0
    skipped: str = ""  # why it did not apply (its target was already down)


@dataclass
class Watched:
    job: str
    events: int  # the job's events, its terminal one included
    transport: str
    producer: bool
    watch: ResumingWatch
    started: float = 0.0


@dataclass
class Run:
    """Everything the run holds: processes, clients and what happened."""

    args: argparse.Namespace
    out: Path
    stack: Any
    proxy: CuttingProxy
    redis_server: RedisServer | None
    cluster: LocalCluster | None
    client: Any
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    producer: subprocess.Popen[bytes] | None = None
    watched: list[Watched] = field(default_factory=list)
    happened: list[Happened] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)  # targets a fault is acting on now
    producer_plans: Path = Path()
    tally: Tally = field(default_factory=Tally)
    start_failures: int = 0  # gateway starts that failed (and were tried again)

    # -- processes --------------------------------------------------------------------------

    def spawn_worker(self, index: int) -> subprocess.Popen[bytes]:
        with open(self.out / f"worker-{index}.log", "ab") as log:
            return spawn(
                [*SERVICE, "worker", "--concurrency", str(self.args.clients)],
                self.stack.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def spawn_producer(self) -> subprocess.Popen[bytes]:
        with open(self.out / "producer.log", "ab") as log:
            module = [sys.executable, "-m", "benchmarks.chaos_producer"]
            return spawn(
                [*module, str(self.producer_plans)],
                self.stack.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def rss_mib(self) -> dict[str, float]:
        processes = {
            **{f"gateway-{i}": g for i, g in enumerate(self.stack.gateways)},
            **{f"worker-{i}": w for i, w in enumerate(self.workers)},
            "producer": self.producer,
        }
        return {
            name: round(proc_stats(p.pid)[0], 1)
            for name, p in processes.items()
            if p is not None and p.poll() is None
        }


async def ended(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Wait for a child to exit without blocking the event loop; SIGKILL it after
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
        await asyncio.sleep(0.05)


# -- faults -------------------------------------------------------------------------------------


async def inject(run: Run, fault: Fault) -> Happened:
    happened = Happened(fault, time.monotonic())
    run.happened.append(happened)
    action = FAULTS[fault.kind]
    try:
        await action(run, fault, happened)
    except Exception as e:  # a fault that could not be applied is reported, not fatal
        happened.skipped = f"{type(e).__name__}: {e}"
    if not happened.ended:
        happened.ended = time.monotonic()
    return happened


async def _exclusive(
    run: Run, target: str, happened: Happened, act: Callable[[], Awaitable[None]]
) -> None:
    """One fault at a time on one process or node; a fault that finds it busy is skipped."""
    if target in run.busy:
        happened.skipped = f"{target} already under a fault"
        return
    run.busy.add(target)
    try:
        await act()
    finally:
        run.busy.discard(target)


async def gateway_down(run: Run, fault: Fault, happened: Happened) -> None:
    index = fault.target % len(run.stack.gateways)

    async def act() -> None:
        gateway = run.stack.gateways[index]
        gateway.send_signal(signal.SIGKILL if fault.kind == "gateway_kill" else signal.SIGTERM)
        await ended(gateway)
        happened.ended = time.monotonic()
        await asyncio.sleep(fault.hold_s)
        await restarted(run, lambda: run.stack.start_gateway(index))

    await _exclusive(run, f"gateway-{index}", happened, act)


async def restarted(run: Run, start: Callable[[], Awaitable[None]]) -> None:
    """Start a process again as a supervisor would (Kubernetes, compose `restart: always`):
    a start that fails is counted and tried again."""
    for attempt in range(1, 31):
        try:
            await start()
            return
        except RuntimeError:
            run.start_failures += 1
            await asyncio.sleep(min(5.0, 0.5 * attempt))
    raise RuntimeError("the gateway did not start in 30 attempts")


async def worker_kill(run: Run, fault: Fault, happened: Happened) -> None:
    index = fault.target % len(run.workers)

    async def act() -> None:
        run.workers[index].kill()
        await ended(run.workers[index])
        happened.ended = time.monotonic()
        await asyncio.sleep(fault.hold_s)
        run.workers[index] = run.spawn_worker(index)

    await _exclusive(run, f"worker-{index}", happened, act)


async def producer_kill(run: Run, fault: Fault, happened: Happened) -> None:
    async def act() -> None:
        assert run.producer is not None
        run.producer.kill()
        await ended(run.producer)
        happened.ended = time.monotonic()
        await asyncio.sleep(fault.hold_s)
        run.producer = run.spawn_producer()

    await _exclusive(run, "producer", happened, act)


async def subscriber_kill(run: Run, _fault: Fault, _happened: Happened) -> None:
    for node in await run.stack.nodes():  # a client per primary, closed after use
        async with node:
            await node.client_kill_filter(_type="pubsub")


async def redis_freeze(run: Run, fault: Fault, happened: Happened) -> None:
    server = _redis_target(run, fault)

    async def act() -> None:
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(fault.hold_s)
        finally:
            server.process.send_signal(signal.SIGCONT)

    await _exclusive(run, f"redis-{server.port}", happened, act)


async def redis_restart(run: Run, fault: Fault, happened: Happened) -> None:
    server = _redis_target(run, fault)

    async def act() -> None:
        assert server.process is not None
        server.process.send_signal(signal.SIGCONT)
        server.process.terminate()  # it writes what the append-only file lacks, and exits
        await ended(server.process)
        server.launch()
        deadline = time.monotonic() + 60
        while not server.answers():
            if time.monotonic() > deadline:
                raise RuntimeError("Redis did not answer within 60 s of its restart")
            await asyncio.sleep(0.02)

    await _exclusive(run, f"redis-{server.port}", happened, act)


def _redis_target(run: Run, fault: Fault) -> RedisServer:
    if run.cluster is None:
        assert run.redis_server is not None
        return run.redis_server
    primaries = sorted(run.cluster.primaries(), key=lambda n: n.port)
    return primaries[fault.target % len(primaries)]


async def proxy_cut(run: Run, _fault: Fault, _happened: Happened) -> None:
    run.proxy.cut_all()


async def primary_failover(run: Run, fault: Fault, happened: Happened) -> None:
    primary = _redis_target(run, fault)

    async def act() -> None:
        async with redis.Redis(port=primary.port, protocol=2) as node:
            replicas: Any = await node.info("replication")
        replica_port = int(replicas["slave0"]["port"])
        async with redis.Redis(port=replica_port, protocol=2) as replica:
            await replica.execute_command("CLUSTER", "FAILOVER")  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + 30
            while (await replica.info("replication"))["role"] != "master":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica was not promoted within 30 s")
                await asyncio.sleep(0.05)

    await _exclusive(run, f"redis-{primary.port}", happened, act)


async def slot_migration(run: Run, fault: Fault, happened: Happened) -> None:
    live = [w for w in run.watched if not w.watch.finished]
    if not live:
        happened.skipped = "no job watched"
        return
    job = live[fault.target % len(live)].job
    await run.client.nodes_manager.initialize()  # where the slot lives now (after failovers)
    slot = int(await run.client.cluster_keyslot(KEYS.events(job)))
    source = run.client.get_node_from_key(KEYS.events(job))
    assert run.cluster is not None
    primaries = sorted(run.cluster.primaries(), key=lambda n: n.port)
    target = next(n for n in primaries if n.port != int(source.port))

    async def act() -> None:
        await migrate_slot(slot, int(source.port), target.port)

    await _exclusive(run, f"slot-{slot}", happened, act)


async def migrate_slot(slot: int, source_port: int, target_port: int) -> int:
    """Move one slot and its keys between primaries as `redis-cli --cluster reshard` does."""
    async with (
        redis.Redis(port=source_port, protocol=2) as source,
        redis.Redis(port=target_port, protocol=2) as target,
    ):
        source_id = (await source.execute_command("CLUSTER", "MYID")).decode()  # type: ignore[no-untyped-call]
        target_id = (await target.execute_command("CLUSTER", "MYID")).decode()  # type: ignore[no-untyped-call]
        await target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)  # type: ignore[no-untyped-call]
        await source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)  # type: ignore[no-untyped-call]
        moved = 0
        while keys := await source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):  # type: ignore[no-untyped-call]
            await source.execute_command(  # type: ignore[no-untyped-call]
                "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys
            )
            moved += len(keys)
        for node in (target, source):
            await node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)  # type: ignore[no-untyped-call]
        return moved


FAULTS: dict[str, Callable[[Run, Fault, Happened], Awaitable[None]]] = {
    "gateway_kill": gateway_down,
    "gateway_term": gateway_down,
    "worker_kill": worker_kill,
    "producer_kill": producer_kill,
    "subscriber_kill": subscriber_kill,
    "redis_freeze": redis_freeze,
    "redis_restart": redis_restart,
    "proxy_cut": proxy_cut,
    "primary_failover": primary_failover,
    "slot_migration": slot_migration,
}


async def play(run: Run, faults: list[Fault], started: float) -> None:
    """Inject each fault at its moment; each runs on its own, so they overlap."""
    tasks = []
    for fault in faults:
        await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
        tasks.append(asyncio.create_task(inject(run, fault)))
    await asyncio.gather(*tasks)


# -- load ---------------------------------------------------------------------------------------


def draw_job(rng: random.Random) -> dict[str, int]:
    """A job's plan: 10-40 events every 250-1000 ms; 100 B-2 KB each, one job in ten 8-64 KB."""
    large = rng.random() < 0.1
    low, high = (8 * 1024, 64 * 1024) if large else (100, 2048)
    size = int(math.exp(rng.uniform(math.log(low), math.log(high))))
    return {"n": rng.randint(10, 40), "interval_ms": rng.choice((250, 500, 1000)), "size": size}


async def client_slot(
    run: Run, index: int, base: str, producer: AsyncProducer, *, load_ends: float, deadline: float
) -> None:
    """One client, for the whole run: watch a job to its end, then take another."""
    rng = random.Random(run.args.seed * 1_000_003 + index)
    transport = "sse" if index % 10 == 9 else "ws"
    slow = transport == "ws" and index % 20 == 7
    uses_producer = index % 10 == 3
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        while time.monotonic() < load_ends:
            plan = draw_job(rng)
            if uses_producer:
                job, token = await retried(lambda: producer.create(kind="chaos"), deadline)
                line = orjson.dumps({"job": job, **plan}) + b"\n"
                with run.producer_plans.open("ab") as plans:
                    plans.write(line)
            else:
                job, token = await retried(partial(submit, http, plan), deadline)
            watch = ResumingWatch(
                base,
                job,
                token,
                tally=run.tally,
                max_backoff_s=5.0,
                transport=transport,
                read_delay_s=1.0 if slow else 0.0,
                keep_arrivals=True,
            )
            watched = Watched(job, plan["n"] + 1, transport, uses_producer, watch)
            watched.started = time.monotonic()
            run.watched.append(watched)
            await watch.run(deadline)
            if not watch.finished:
                return  # out of time: reported as stuck


async def submit(http: httpx.AsyncClient, plan: dict[str, int]) -> tuple[str, str]:
    """POST /jobs through the proxy."""
    reply = await http.post("/jobs", json={"kind": "count", "payload": plan})
    reply.raise_for_status()
    body = reply.json()
    return body["job"], body["token"]


async def retried(attempt: Callable[[], Awaitable[T]], deadline: float) -> T:
    """Try again, with a jittered back-off, while the stack is under a fault."""
    tries = 0
    while True:
        try:
            return await attempt()
        except Exception:
            if time.monotonic() > deadline:
                raise
        tries += 1
        await asyncio.sleep(min(2.0, 0.05 * 2**tries) * random.random())


# -- the run ------------------------------------------------------------------------------------


async def run_chaos(args: argparse.Namespace) -> dict[str, Any]:
    progress = Progress("chaos")
    kinds = CLUSTER_FAULTS if args.cluster else SINGLE_FAULTS
    if args.faults:
        kinds = tuple(kind for kind in kinds if kind in args.faults.split(","))
    faults = schedule(args.seed, args.duration_s, args.fault_every_s, kinds)
    print(f"chaos: seed {args.seed}: {len(faults)} faults over {args.duration_s:g} s", flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix=f"resultcast-chaos-{args.seed}-"))
    out.mkdir(parents=True, exist_ok=True)
    redis_server, cluster = None, None
    if args.cluster:
        cluster = LocalCluster(out / "cluster")
        cluster.start()
        url = cluster.url
    else:
        redis_server = RedisServer(
            out / "redis", args=("--appendonly", "yes", "--appendfsync", "always")
        )
        redis_server.start(die_with_parent=True)
        url = redis_server.url
    os.environ["BENCH_GATEWAY_LOG"] = str(out / "gateways.log")
    extra = {
        **CHAOS_ENV,
        "MAX_SOCKETS": str(args.clients * 3 + 200),
        "LOG_LEVEL": "WARNING",
    }
    try:
        async with running_stack(url, args.mode, extra, cluster=args.cluster, gateways=2) as stack:
            stack.env["LOG_LEVEL"] = "WARNING"
            ports = [int(base.rsplit(":", 1)[1]) for base in stack.bases]
            proxy = CuttingProxy(ports, None)
            base = await proxy.start()
            run = Run(args, out, stack, proxy, redis_server, cluster, stack.client)
            run.producer_plans = out / "producer-jobs.jsonl"
            run.producer_plans.touch()
            try:
                return await drive(run, base, faults, progress)
            finally:
                for process in [*run.workers, run.producer]:
                    if process is not None:
                        stop(process)
                await proxy.stop()
    finally:
        if cluster is not None:
            cluster.stop()
        if redis_server is not None:
            redis_server.stop()


async def drive(run: Run, base: str, faults: list[Fault], progress: Progress) -> dict[str, Any]:
    args = run.args
    run.workers = [run.spawn_worker(0), run.spawn_worker(1)]
    run.producer = run.spawn_producer()
    settings = Settings.from_env(run.stack.env)
    started = time.monotonic()
    load_ends = started + args.duration_s
    deadline = load_ends + args.drain_s
    async with AsyncProducer(settings=settings) as producer:
        clients = [
            asyncio.create_task(
                client_slot(run, i, base, producer, load_ends=load_ends, deadline=deadline)
            )
            for i in range(args.clients)
        ]
        await asyncio.sleep(min(5.0, args.duration_s / 10))  # before the first fault
        baseline = run.rss_mib()
        chaos = asyncio.create_task(play(run, faults, started))
        mid: dict[str, float] = {}
        while not all(c.done() for c in clients):
            if not mid and time.monotonic() - started > args.duration_s / 2:
                mid = run.rss_mib()  # under load, half-way
            elapsed = time.monotonic() - started
            progress.show(
                min(1.0, elapsed / (args.duration_s + 10)),
                f"{run.tally.events} events, {len(run.happened)} faults",
            )
            await asyncio.sleep(0.5)
        await chaos
        for client in clients:
            client.result()  # raise what failed in the clients themselves
    # Memory is read once every process has settled and given back what it freed (the
    # gateways and workers do that every TRIM_INTERVAL_S).
    await asyncio.sleep(args.settle_s)
    final = run.rss_mib()
    statuses = await job_statuses(run)
    progress.done(f"{run.tally.events} events")
    return report(run, started, {"baseline": baseline, "mid": mid, "end": final}, statuses)


async def job_statuses(run: Run) -> dict[str, tuple[str, int]]:
    """Each job's status and last seq, as Redis holds them: what its client must have got."""
    found = {}
    for watched in run.watched:
        status, seq = await run.client.hmget(KEYS.meta(watched.job), ["status", "seq"])
        found[watched.job] = (status.decode() if status else "missing", int(seq or 0))
    return found


def error_lines(out: Path) -> list[tuple[str, str]]:
    """Every ERROR line the processes logged: (the file, its message)."""
    found = []
    for path in sorted(out.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            match = LOG_LINE.match(line)
            if match and match["level"] in ("ERROR", "CRITICAL"):
                found.append((path.name, f"{match['logger']}: {match['message']}"))
    return found


def explain(errors: list[tuple[str, str]], kinds: set[str]) -> tuple[Counter[str], Counter[str]]:
    """ERROR lines a fault that happened explains, and the others (normalised, counted)."""
    explained: Counter[str] = Counter()
    unexplained: Counter[str] = Counter()
    for _, message in errors:
        shape = re.sub(r"[0-9a-f]{8,}|[A-Za-z0-9_-]{22}|\d+", "#", message)[:200]
        causes = next(
            (causes for pattern, causes in EXPLAINED.items() if re.search(pattern, message)), ()
        )
        (explained if kinds & set(causes) else unexplained)[shape] += 1
    return explained, unexplained


def recovery_s(run: Run, happened: Happened) -> list[float]:
    """For each client waiting on a job when the fault ended: the time from then until its
    next event."""
    waits = []
    for watched in run.watched:
        arrivals = watched.watch.arrivals or []
        if watched.started > happened.ended or not arrivals or arrivals[-1] <= happened.ended:
            continue  # it began later, or ended before
        # Arrival times only grow: the first one after the fault's end, by bisection.
        waits.append(arrivals[bisect_right(arrivals, happened.ended)] - happened.ended)
    return waits


def report(
    run: Run,
    started: float,
    rss: dict[str, dict[str, float]],
    statuses: dict[str, tuple[str, int]],
) -> dict[str, Any]:
    applied = [h for h in run.happened if not h.skipped]
    kinds = {h.fault.kind for h in applied}
    explained, unexplained = explain(error_lines(run.out), kinds)
    by_kind: dict[str, list[float]] = defaultdict(list)
    for happened in applied:
        by_kind[happened.fault.kind] += recovery_s(run, happened)
    watched = run.watched
    stored = {job: seq for job, (_, seq) in statuses.items()}
    lost = sum(max(0, stored[w.job] - len(set(w.watch.seqs))) for w in watched)
    ended = [status for status, _ in statuses.values()]
    return {
        "seed": run.args.seed,
        "redis": "cluster (3 primaries + 3 replicas)"
        if run.args.cluster
        else "one server, appendfsync always",
        "mode": run.args.mode,
        "clients": run.args.clients,
        "seconds": round(time.monotonic() - started, 1),
        "settings": CHAOS_ENV,
        "faults": dict(Counter(h.fault.kind for h in applied)),
        "faults_skipped": dict(Counter(h.fault.kind for h in run.happened if h.skipped)),
        "jobs": len(watched),
        "jobs_sse": sum(1 for w in watched if w.transport == "sse"),
        "jobs_producer": sum(1 for w in watched if w.producer),
        "jobs_not_ended": sum(1 for s in ended if s not in ("done", "failed")),
        "jobs_failed": sum(1 for s in ended if s == "failed"),
        "events_checked": sum(len(w.watch.seqs) for w in watched),
        "lost": lost,
        "duplicated": sum(w.watch.duplicates for w in watched),
        "out_of_order": sum(1 for w in watched if w.watch.seqs != sorted(w.watch.seqs)),
        "gone": sum(w.watch.gone for w in watched),
        "exact_jobs": sum(1 for w in watched if w.watch.exact(stored[w.job])),
        "gateway_start_failures": run.start_failures,
        "connections": run.tally.opened,
        "refused_connects": run.tally.refused,
        "close_codes": run.tally.close_codes,
        "recovery_ms": {kind: summary_ms(waits) for kind, waits in sorted(by_kind.items())},
        "errors_explained": dict(explained),
        "errors_unexplained": dict(unexplained),
        # 5 s in, half-way under load, and after the load (processes restarted by a fault
        # start again from their own baseline).
        "rss_mib_baseline": rss["baseline"],
        "rss_mib_mid": rss["mid"],
        "rss_mib_end": rss["end"],
        "log_dir": str(run.out),
        "_timeline": timeline(run, started),
    }


def timeline(run: Run, started: float) -> dict[str, Any]:
    seconds: Counter[int] = Counter()
    for watched in run.watched:
        for t in watched.watch.arrivals or []:
            seconds[int(t - started)] += 1
    return {
        "events_per_s": [seconds.get(s, 0) for s in range(max(seconds, default=0) + 1)],
        "faults": [
            {**asdict(h.fault), "began_s": round(h.began - started, 2), "skipped": h.skipped}
            for h in run.happened
        ],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    from benchmarks.charts import chart

    line = result["_timeline"]
    title = (
        f"chaos, seed {result['seed']}, {result['redis']}: {sum(result['faults'].values())} "
        f"faults, {result['events_checked']} events, lost {result['lost']}, "
        f"duplicated {result['duplicated']}"
    )
    with chart(path, title, "seconds", "events delivered per second") as ax:
        ax.plot(range(len(line["events_per_s"])), line["events_per_s"], linewidth=0.8)
        colours: dict[str, Any] = {}
        for fault in line["faults"]:
            if fault["skipped"]:
                continue
            kind = fault["kind"]
            colour = colours.setdefault(kind, f"C{len(colours) + 1}")
            ax.axvline(fault["began_s"], color=colour, alpha=0.6, linewidth=0.8)
        for kind, colour in colours.items():
            ax.plot([], [], color=colour, label=kind)
        ax.legend(fontsize="x-small", ncol=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1 << 20))
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--fault-every-s", type=float, default=6.0)
    parser.add_argument("--drain-s", type=float, default=120.0, help="time for jobs to end")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=TRIM_INTERVAL_S + 5,
        help="idle time after the load before memory is read",
    )
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--faults", help="only these kinds, comma-separated (default: all)")
    parser.add_argument("--mode", default="pubsub", choices=DELIVERY_MODES)
    parser.add_argument("--out", type=Path, help="logs and data (default: a new temp dir)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    raise_open_files_limit()
    result = asyncio.run(run_chaos(args))
    if args.plot:
        plot(result, args.plot)
    line = result.pop("_timeline")
    for key, value in result.items():
        print(f"{key:22} {value}")
    if args.json:
        args.json.write_text(json.dumps(result | {"timeline": line}, indent=1))
    print(f"chaos: seed {args.seed} (the same seed replays the same schedule)")


if __name__ == "__main__":
    main()
