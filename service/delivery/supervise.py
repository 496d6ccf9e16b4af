"""Background tasks that must never die silently: the one place that retries them.

A listener that dies without a word leaves its watches hanging (encode/broadcaster#144 is
the bug to avoid). Every long-running task of a live source or of the hub runs under
`restart_forever`, and none of them has a retry loop of its own: a task makes one attempt
(connect, then serve until the connection is lost) and raises when it ends. Redis trouble (a
lost connection, a timeout, a failover) is expected and logged as one line; anything else
is a bug, logged with its traceback, and `on_crash` lets the owner mark itself not ready.
Either way the task starts again after a jittered back-off that grows while attempts keep
failing, and at once after an attempt that worked. Only cancellation stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from service.backoff import reconnect_delay_s
from service.model import ServiceError
from service.redis_client import map_redis_error

log = logging.getLogger(__name__)

# An attempt that ran this long before failing had worked (unless its owner says otherwise).
HEALTHY_RUN_S = 30.0


async def restart_forever(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    on_crash: Callable[[BaseException], None] | None = None,
    on_restart: Callable[[], None] | None = None,
    on_lost: Callable[[ServiceError], None] | None = None,
    worked: Callable[[], bool] | None = None,
) -> None:
    """Run `run()` until cancelled; start it again whenever it ends or fails.

    `worked()`, asked after an attempt ends, says whether it had done its job (connected and
    served) before it ended; by default, whether it ran `HEALTHY_RUN_S`. One that worked is
    started again at once, and the back-off starts over. `on_lost`, when given, is told of
    Redis trouble instead of the log (a loop per watched job reports it to its watchers; one
    line per loop would flood the log in an outage).
    """
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
            error = map_redis_error(e)
            if error is not None and on_lost is not None:
                on_lost(error)
            elif error is not None:
                log.warning("%s lost Redis: %s: %s", name, type(e).__name__, e)
            else:
                log.exception("%s failed unexpectedly; starting it again", name)
                if on_crash is not None:
                    on_crash(e)
        ok = worked() if worked is not None else loop.time() - started > HEALTHY_RUN_S
        failures = 0 if ok else failures + 1
        if failures:
            await asyncio.sleep(reconnect_delay_s(failures))
        if on_restart is not None:
            on_restart()
