"""Celery tasks whose progress browsers watch live through resultcast.

Run the worker from this folder:  celery -A tasks worker --pool=solo
Environment: REDIS_URL and SECRET_KEY as for resultcast; CELERY_BROKER_URL (default: REDIS_URL).
"""

from __future__ import annotations

import os

from celery import Celery, Task  # type: ignore[import-untyped]

from service.producer import Producer

broker = os.environ.get("CELERY_BROKER_URL", os.environ["REDIS_URL"])
app = Celery("resultcast_example", broker=broker)
producer = Producer()  # safe at import time: it starts its thread at first use, per process


@app.task(bind=True, max_retries=3)  # type: ignore[untyped-decorator]
def report(self: Task, job: str, steps: int, fail_at: int = 0) -> None:
    """`steps` progress events, then done. With `fail_at`, the first attempt breaks at that
    step and Celery retries the task: the retry goes on after the events already sent."""
    with producer.open(job) as j:
        if j.finished:
            return  # a re-delivered task whose job already ended
        try:
            for step in range(j.resumed_after + 1, steps + 1):
                if step == fail_at and j.attempt == 1:
                    raise RuntimeError(f"step {step} failed on the first attempt")
                j.emit({"step": step, "of": steps})
        except Exception as e:
            if self.request.retries >= self.max_retries:
                j.fail(f"gave up after {self.request.retries + 1} attempts: {e}")
                return
            raise self.retry(exc=e, countdown=0) from e
        j.done({"steps": steps})


def submit(steps: int, fail_at: int = 0) -> tuple[str, str]:
    """What the app's backend does: create the job, queue the task, give the token to the
    browser (which then watches the job with it)."""
    job, token = producer.create(kind="report")
    report.delay(job, steps, fail_at)
    return job, token
