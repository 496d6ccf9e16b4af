"""Starting and stopping local processes: the one home for `dev`, the bench, the benchmarks
and the tests.

Every child is stopped by its PID (SIGTERM, a wait, then SIGKILL), never by name. A child
may also be told to die with its parent (Linux's parent-death signal), so none outlives a
supervisor that is killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

STOP_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1
# `python -m service ...` with this interpreter: how every service process is started.
SERVICE = [sys.executable, "-m", "service"]
READYZ_REQUEST = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


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


async def answers_ready(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether a gateway answers `GET /readyz` with 200 now (a plain HTTP/1.1 request: the
    service's own packages only, so `dev` needs no HTTP client)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                )
                status = (await reader.readline()).split()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return len(status) > 1 and status[1] == b"200"


async def wait_ready(
    host: str,
    port: int,
    children: list[subprocess.Popen[bytes]],
    *,
    timeout_s: float = 60.0,
    stopping: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until the gateway on `port` is ready; False as soon as one of `children` exits
    (a gateway that failed at start, or a process it needs), `stopping()` says so, or time
    runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline and not stopping():
        if any(child.poll() is not None for child in children):
            return False
        if await answers_ready(host, port):
            return True
        await asyncio.sleep(0.05)
    return False
