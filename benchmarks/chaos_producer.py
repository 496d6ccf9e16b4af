"""The chaos benchmark's producer process: writes the events of jobs it did not run itself.

    python -m benchmarks.chaos_producer JOBS_FILE

JOBS_FILE gets one JSON line per job from the chaos driver (`{"job", "n", "interval_ms",
"size"}`; the job already created with `AsyncProducer.create`). This process follows the
file and writes each job's events through `service.producer` (`{"i": i, "pad": ...}` for i
in 1..n, then `done`), up to `--concurrency` jobs at once. The driver SIGKILLs it mid-job and
starts it again: it then reopens every job in the file, and each goes on after what was
written (`resumed_after`), once the killed writer's lease has lapsed. REDIS_URL, SECRET_KEY
and the rest come from the environment, as for any producer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from service.logs import configure
from service.producer import AsyncProducer, EmitError

log = logging.getLogger("chaos_producer")
POLL_S = 0.2


async def write_job(producer: AsyncProducer, plan: dict[str, Any]) -> None:
    """Every event of one job, after what an earlier run wrote; retried until it ends."""
    pad = "x" * int(plan["size"])
    interval_s = int(plan["interval_ms"]) / 1000
    while True:
        try:
            async with producer.open(plan["job"], wait_s=60) as job:
                if job.finished:
                    return
                for i in range(job.resumed_after + 1, int(plan["n"]) + 1):
                    await job.emit({"i": i, "pad": pad})
                    await asyncio.sleep(interval_s)
                await job.done({"count": plan["n"]})
                return
        except EmitError as e:
            if not e.retryable:
                log.error("job %s: %s", plan["job"], e)
                return
            log.warning("job %s: %s; retrying", plan["job"], e)
        except Exception:
            log.exception("job %s: writing failed unexpectedly; retrying", plan["job"])
        await asyncio.sleep(0.5)


async def follow(path: Path, concurrency: int) -> None:
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()
    offset = 0
    async with AsyncProducer() as producer:

        async def one(plan: dict[str, Any]) -> None:
            async with slots:
                await write_job(producer, plan)

        while True:
            with path.open("rb") as lines:
                lines.seek(offset)
                for line in lines:
                    if not line.endswith(b"\n"):
                        break  # the driver is still writing it
                    offset += len(line)
                    task = asyncio.create_task(one(orjson.loads(line)))
                    running.add(task)
                    task.add_done_callback(running.discard)
            await asyncio.sleep(POLL_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs_file", type=Path)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    configure(os.environ.get("LOG_LEVEL", "WARNING"), banner=False)
    asyncio.run(follow(args.jobs_file, args.concurrency))


if __name__ == "__main__":
    main()
