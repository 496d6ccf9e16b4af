"""Background tasks that must never die silently: restarted with back-off, and said so.

A listener that dies without a word leaves its watches hanging (encode/broadcaster#144 is
the bug to avoid). Every long-running task of a live source or of the hub runs under
`restart_forever`: an unexpected exception is logged with its traceback, `on_crash` lets the
owner mark itself not ready and catch up what the task may have missed, and the task starts
again after a jittered back-off. Only cancellation stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from service.backoff import reconnect_delay_s

log = logging.getLogger(__name__)

# A task that ran this long before failing starts again quickly: it was not failing in a loop.
HEALTHY_RUN_S = 30.0


async def restart_forever(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    on_crash: Callable[[BaseException], None] | None = None,
    on_restart: Callable[[], None] | None = None,
) -> None:
    """Run `run()` until cancelled; restart it, after a back-off, whenever it ends or fails."""
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        started = loop.time()
        try:
            await run()
            log.warning("%s ended by itself; starting it again", name)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("%s failed unexpectedly; starting it again", name)
            if on_crash is not None:
                on_crash(e)
        failures = 1 if loop.time() - started > HEALTHY_RUN_S else failures + 1
        await asyncio.sleep(reconnect_delay_s(failures))
        if on_restart is not None:
            on_restart()
