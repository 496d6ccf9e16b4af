"""User handlers loaded by `--handlers tests.handlers_for_tests:HANDLERS` in tests."""

from __future__ import annotations

from typing import Any

from service.handlers import Job


async def shout(job: Job) -> Any:
    await job.emit({"text": str(job.payload.get("text", "")).upper()})
    return {"ok": True}


async def crash(job: Job) -> Any:
    raise RuntimeError("secret internal detail")


HANDLERS = {"shout": shout, "crash": crash}
