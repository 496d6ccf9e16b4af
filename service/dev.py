"""`python -m service dev`: Redis, migrations, a gateway and workers, in one command.

Every child is started by this process, watched, and stopped by PID on Ctrl-C, in order:
gateway and workers first (so they finish cleanly), Redis last. Children also get a
parent-death signal, so none outlives this process even if it is killed outright.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from service.config import Settings
from service.local_redis import start_redis
from service.logs import redact
from service.migrate_cli import run_migrate
from service.processes import SERVICE, spawn, stop, wait_ready

DATA_DIR = Path(".data")
KEY_FILE = "dev-secret-key"
LOCK_FILE = "dev.lock"


def run_dev(*, host: str, port: int, workers: int) -> int:
    data_dir = DATA_DIR.resolve()
    lock = _claim(data_dir, host, port)
    if lock is None:
        return 1
    children: list[subprocess.Popen[bytes]] = []
    redis_process = None
    env = dict(os.environ)
    if "SECRET_KEY" not in env:
        # Kept with the results it signs tokens for: a restart keeps old jobs readable.
        env["SECRET_KEY"] = _dev_key(data_dir / KEY_FILE)
    if "REDIS_URL" not in os.environ:
        try:
            redis_process, env["REDIS_URL"] = start_redis(data_dir)
        except RuntimeError as e:
            print(f"dev: {e}", file=sys.stderr)
            return 1
        print(
            f"dev: started redis-server (pid {redis_process.pid}) at {env['REDIS_URL']} with "
            "its data in ./.data/",
            flush=True,
        )
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        code = asyncio.run(run_migrate(Settings.from_env(env)))
        if code:
            return code
        gateway = [*SERVICE, "gateway", "--host", host, "--port", str(port), "--no-banner"]
        children.append(spawn(gateway, env))
        for _ in range(workers):
            children.append(spawn([*SERVICE, "worker"], env))
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
        if not asyncio.run(wait_ready(host, port, children, stopping=lambda: stopping)):
            if stopping:  # Ctrl-C before the gateway answered: a normal stop
                return 0
            print("dev: the gateway did not start; stopping the stack", file=sys.stderr)
            return 1
        print(_joining(env["REDIS_URL"], data_dir / KEY_FILE), flush=True)
        print(f"dev: demo page at http://{shown}:{port}/  (Ctrl-C stops everything)", flush=True)
        while not stopping:
            if any(child.poll() is not None for child in children):
                print("dev: a child process exited; stopping the stack", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        print("dev: stopping", flush=True)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            stop(child)
        if redis_process is not None:
            stop(redis_process)
        lock.close()
        print("dev: stopped", flush=True)


def _joining(redis_url: str, key_file: Path) -> str:
    """The shell lines that let a producer (a Celery, RQ, arq or Dramatiq worker, a backend)
    join this stack: its Redis and its token key, the key by file so it is never printed."""
    key = (
        f'export SECRET_KEY="$(cat {key_file})"'
        if "SECRET_KEY" not in os.environ
        else "# SECRET_KEY: the one already set in this shell"
    )
    shown_url = redact(redis_url)
    url = f"export REDIS_URL={shown_url}"
    if shown_url != redis_url:
        url += "   # with the password this shell's REDIS_URL has"
    return f"dev: to run a producer or your own worker against this stack:\n  {url}\n  {key}"


def _claim(data_dir: Path, host: str, port: int) -> IO[str] | None:
    """The data directory's lock, once nothing else uses it or the port; None (having said
    why) otherwise."""
    data_dir.mkdir(exist_ok=True)
    lock = _lock(data_dir)
    if lock is None:
        print(
            "dev: another `python -m service dev` is running with ./.data/ (stop it first, or "
            "run this one from another directory)",
            file=sys.stderr,
        )
        return None
    if not _port_free(host, port):
        lock.close()
        print(
            f"dev: port {port} on {host} is taken (another dev or server?); pick one with --port",
            file=sys.stderr,
        )
        return None
    return lock


def _lock(data_dir: Path) -> IO[str] | None:
    """An exclusive lock on the data directory for as long as this dev runs (None if another
    holds it); the kernel releases it however this process ends."""
    handle = (data_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _dev_key(path: Path) -> str:
    """The dev stack's token key: made once, then read back on every start."""
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key
