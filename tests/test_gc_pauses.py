"""What startup made is frozen out of the collector's walks; startup's garbage is not kept."""

from __future__ import annotations

import subprocess
import sys

STARTUP = """
import gc, weakref
from service.gc_pauses import freeze_what_startup_made

class Node:
    pass

def garbage_cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

gone = garbage_cycle()  # unreachable already, but only the collector frees a cycle
kept = [Node() for _ in range(10_000)]
gc.disable()  # nothing collects behind the test's back
frozen = freeze_what_startup_made()
print(frozen >= 10_000, gone() is None, not any(o is kept[0] for o in gc.get_objects()))
"""


def test_startup_objects_are_frozen_and_its_garbage_freed() -> None:
    # frozen: the 10,000 live objects at least; the cycle collected first; and the frozen
    # objects are out of the collector's sight (gc.get_objects no longer lists them)
    run = in_own_python(STARTUP)
    assert run.stdout.split() == ["True", "True", "True"], run.stdout + run.stderr


LESS_OFTEN = """
import gc
from service.gc_pauses import YOUNG_THRESHOLD, collect_less_often

before = gc.get_threshold()
collect_less_often()
after = gc.get_threshold()
print(after == (YOUNG_THRESHOLD, *before[1:]), YOUNG_THRESHOLD > before[0])
"""


def test_the_gateway_collects_its_young_objects_less_often() -> None:
    run = in_own_python(LESS_OFTEN)
    assert run.stdout.split() == ["True", "True"], run.stdout + run.stderr


def in_own_python(code: str) -> subprocess.CompletedProcess[str]:
    """`code` run in a Python of its own: the collector's settings are the process's, and
    pytest's must stay as they are."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
