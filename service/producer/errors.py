"""What a producer's caller may be told, beside the emit errors it shares with workers."""

from __future__ import annotations

from service.publisher import EmitError


class JobBusy(EmitError):
    """Another writer has the job open (or took it over from this one)."""


class NotWritten(EmitError):
    """Events were not written in time (Redis unreachable); they stay queued and retried
    while the producer lives, and are lost if the process ends."""
