"""What a producer's caller may be told, beside the emit errors it shares with workers.

Every one is an `EmitError`; `retryable` says whether the same call may succeed later, so a
task can let its job system retry it (`NotWritten`, `JobBusy`, `RedisUnreachable`) or give
up at once (`JobFinished`, `JobLost`, the limits).
"""

from __future__ import annotations

from service.publisher import EmitError


class JobBusy(EmitError):
    """Another writer has the job open (or took it over from this one)."""

    retryable = True


class NotWritten(EmitError):
    """Events were not written in time (Redis unreachable); they stay queued and retried
    while the producer lives, and are lost if the process ends."""

    retryable = True


class RedisUnreachable(EmitError):
    """Creating or opening a job failed because Redis did not answer (its address, with the
    password masked, and the cause are in the message)."""

    retryable = True
