"""Starting and stopping local processes: the one home for `dev`, the bench, the benchmarks
and the tests.

Every child is stopped by its PID (SIGTERM, a wait, then SIGKILL), never by name. A child
may also be told to die with its parent (Linux's parent-death signal), so none outlives a
supervisor that is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess

STOP_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    args: list[str],
    env: dict[str, str] | None = None,
    *,
    die_with_parent: bool = True,
    **kwargs: object,
) -> subprocess.Popen[bytes]:
    """A child in a session of its own (a Ctrl-C meant for the parent does not reach it).

    `die_with_parent` sets the parent-death signal in the child before it runs; that hook
    (`preexec_fn`) is unsafe once the parent has threads, so pass False from a process that
    may have some (a test run, an asyncio program using `to_thread`).
    """
    hook = {"preexec_fn": _die_with_parent} if die_with_parent else {}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        args, env=env, start_new_session=True, **hook, **kwargs
    )


def stop(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait, then SIGKILL: always by PID, never by name."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
