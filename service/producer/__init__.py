"""Feed resultcast from any Python process: a Celery, RQ, arq or Dramatiq task, a script.

    from service.producer import Producer
    p = Producer()                        # REDIS_URL / SECRET_KEY from the environment
    job, token = p.create(kind="report")  # hand the token to the browser that watches
    with p.open(job) as j:                # a retry opens it again and goes on
        for step in range(j.resumed_after + 1, 11):
            j.emit({"step": step})
        j.done({"url": "..."})

`AsyncProducer` is the same, awaited. Needs only `redis` and `orjson` (no Starlette).
"""

from service.producer.async_producer import AsyncJob, AsyncProducer
from service.producer.errors import JobBusy, NotWritten, RedisUnreachable
from service.producer.sync_producer import Job, Producer
from service.publisher import (
    EmitError,
    EventTooLarge,
    JobFinished,
    JobLost,
    JobTooLarge,
    LimitReached,
    TooManyEvents,
)

__all__ = [
    "AsyncJob",
    "AsyncProducer",
    "EmitError",
    "EventTooLarge",
    "Job",
    "JobBusy",
    "JobFinished",
    "JobLost",
    "JobTooLarge",
    "LimitReached",
    "NotWritten",
    "Producer",
    "RedisUnreachable",
    "TooManyEvents",
]
