"""RQ jobs whose progress browsers watch live through resultcast.

Run the worker from this folder:  rq worker --url "$REDIS_URL" resultcast-example
Environment: REDIS_URL and SECRET_KEY as for resultcast.
"""

from __future__ import annotations

import os

from redis import Redis
from rq import Queue, Retry, get_current_job

from service.producer import Producer

producer = Producer()  # safe at import time: it starts its thread at first use, per process


def report(job: str, steps: int, fail_at: int = 0) -> None:
    """`steps` progress events, then done. With `fail_at`, the first attempt breaks at that
    step and RQ retries the job (`Retry`): the retry goes on after the events already sent."""
    rq_job = get_current_job()
    retries_left = (rq_job.retries_left or 0) if rq_job is not None else 0
    with producer.open(job) as j:
        if j.finished:
            return
        try:
            for step in range(j.resumed_after + 1, steps + 1):
                if step == fail_at and j.attempt == 1:
                    raise RuntimeError(f"step {step} failed on the first attempt")
                j.emit({"step": step, "of": steps})
        except Exception as e:
            if not retries_left:
                j.fail(f"gave up after {j.attempt} attempts: {e}")
            raise
        j.done({"steps": steps})


def submit(steps: int, fail_at: int = 0) -> tuple[str, str]:
    """What the app's backend does: create the job, enqueue it, hand the token to the browser."""
    job, token = producer.create(kind="report")
    queue = Queue("resultcast-example", connection=Redis.from_url(os.environ["REDIS_URL"]))
    queue.enqueue(report, job, steps, fail_at, retry=Retry(max=3))
    return job, token
