"""Short pauses of Python's cyclic garbage collector in the long-running processes.

A full (generation 2) collection walks every tracked object the process holds, and most of
them are what startup made and never frees: modules, classes, functions, the application.
Measured at 5,000 events/s: the worker's full collections took 28 to 40 ms and the gateway's
up to 55 ms, every event emitted or sent meanwhile waiting that long, the p99 latency's
tail. `gc.freeze()` after startup moves those objects out of the collector's sight (they are
never garbage), so a full collection walks only what the process made since. A collection
first, so that no garbage of startup's is frozen with them. `python -m service gateway` and
`python -m service worker` call this once they are set up; a process that runs a gateway or
a worker inside its own (the tests, an application) and a library user's (the producer) are
left to their owners.

The gateway also collects its youngest generation less often (`collect_less_often`): what
each connection makes lives as long as the connection, and at Python's default every few
connections arriving cost a walk of all of them.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

# Tracked objects made (net of those freed) before a collection of the youngest generation;
# Python's default is 700.
YOUNG_THRESHOLD = 7_000


def freeze_what_startup_made() -> int:
    """Collect, then freeze every object alive now; how many were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%d objects of startup frozen out of the garbage collector's walks", frozen)
    return frozen


def collect_less_often() -> None:
    """Collect the youngest generation after ten times as many new objects as by default.

    A WebSocket makes about 130 tracked objects that live as long as it does, and a full
    collection follows every hundred young ones once the tracked objects grew by a quarter:
    12,000 connections arriving caused 11 full collections, each walking every live
    socket's objects (1.24 s of the gateway's 4.7 s of CPU). At this threshold there were 2
    (0.22 s), and a young collection takes under 1 ms.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
