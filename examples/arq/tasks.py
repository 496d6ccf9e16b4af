"""arq jobs whose progress browsers watch live through resultcast (async: `AsyncProducer`).

Run the worker from this folder:  arq tasks.WorkerSettings
Environment: REDIS_URL and SECRET_KEY as for resultcast.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq import Retry, create_pool
from arq.connections import RedisSettings

from service.producer import AsyncProducer

REDIS = RedisSettings.from_dsn(os.environ["REDIS_URL"])
MAX_TRIES = 4


async def report(ctx: dict[str, Any], job: str, steps: int, fail_at: int = 0) -> None:
    """`steps` progress events, then done. With `fail_at`, the first try breaks at that step
    and arq retries the job (`Retry`): the retry goes on after the events already sent."""
    producer: AsyncProducer = ctx["producer"]
    async with producer.open(job) as j:
        if j.finished:
            return
        try:
            for step in range(j.resumed_after + 1, steps + 1):
                if step == fail_at and j.attempt == 1:
                    raise RuntimeError(f"step {step} failed on the first attempt")
                await j.emit({"step": step, "of": steps})
        except Exception as e:
            if ctx["job_try"] >= MAX_TRIES:
                await j.fail(f"gave up after {ctx['job_try']} tries: {e}")
                return
            raise Retry(defer=0) from e
        await j.done({"steps": steps})


async def startup(ctx: dict[str, Any]) -> None:
    ctx["producer"] = AsyncProducer()


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["producer"].aclose()


class WorkerSettings:
    functions: ClassVar = [report]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = REDIS
    max_tries = MAX_TRIES


async def submit(producer: AsyncProducer, steps: int, fail_at: int = 0) -> tuple[str, str]:
    """What the app's backend does: create the job, enqueue it, hand the token over."""
    job, token = await producer.create(kind="report")
    pool = await create_pool(REDIS)
    try:
        await pool.enqueue_job("report", job, steps, fail_at)
    finally:
        await pool.aclose()
    return job, token
