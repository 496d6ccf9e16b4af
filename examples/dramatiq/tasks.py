"""Dramatiq actors whose progress browsers watch live through resultcast.

Run the worker from this folder:  dramatiq tasks --processes 1 --threads 2
Environment: REDIS_URL and SECRET_KEY as for resultcast; DRAMATIQ_BROKER_URL (default:
REDIS_URL).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from service.producer import Producer

broker_url = os.environ.get("DRAMATIQ_BROKER_URL", os.environ["REDIS_URL"])
broker = RedisBroker(url=broker_url)  # type: ignore[no-untyped-call]
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)
producer = Producer()  # safe at import time: it starts its thread at first use, per process

MAX_RETRIES = 3


@dramatiq.actor(max_retries=MAX_RETRIES, min_backoff=10, max_backoff=100)
def report(job: str, steps: int, fail_at: int = 0) -> None:
    """`steps` progress events, then done. With `fail_at`, the first attempt breaks at that
    step and Dramatiq retries the message: the retry goes on after the events already sent."""
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message is not None else 0
    with producer.open(job) as j:
        if j.finished:
            return
        try:
            for step in range(j.resumed_after + 1, steps + 1):
                if step == fail_at and j.attempt == 1:
                    raise RuntimeError(f"step {step} failed on the first attempt")
                j.emit({"step": step, "of": steps})
        except Exception as e:
            if retries >= MAX_RETRIES:
                j.fail(f"gave up after {retries + 1} attempts: {e}")
            raise
        j.done({"steps": steps})


def submit(steps: int, fail_at: int = 0) -> tuple[str, str]:
    """What the app's backend does: create the job, send the message, hand the token over."""
    job, token = producer.create(kind="report")
    report.send(job, steps, fail_at)
    return job, token
