"""`python -m service healthcheck`: the container image's one HEALTHCHECK, fitting each role.

One image runs every role, so the check asks what this container runs: the command its main
process (PID 1) was started with, unless `--role` says. A gateway is healthy while `/readyz`
answers 200; a worker while Redis answers PING (and its `/metrics` answers, when it serves
them); anything else (a one-shot `migrate`) while it runs. Exit 0 healthy, 1 not, with one line
saying why.
"""

from __future__ import annotations

import asyncio
import itertools
import urllib.error
import urllib.request
from pathlib import Path

from service.config import Settings
from service.redis_client import RedisFactory

TIMEOUT_S = 3.0


def main_command(cmdline: list[str]) -> tuple[str, dict[str, str]]:
    """The service command in an argv (`python -m service gateway --port 80`) and its options."""
    try:
        at = cmdline.index("service") + 1
    except ValueError:
        return "", {}
    rest = cmdline[at:]
    options = {flag: value for flag, value in itertools.pairwise(rest[1:]) if flag[:2] == "--"}
    return (rest[0] if rest else ""), options


def pid1_command() -> tuple[str, dict[str, str]]:
    try:
        raw = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return "", {}
    return main_command([part.decode(errors="replace") for part in raw.split(b"\0") if part])


def http_ok(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
            return reply.status == 200, f"{url} answered {reply.status}"
    except urllib.error.HTTPError as e:
        return False, f"{url} answered {e.code}"
    except OSError as e:
        return False, f"{url} did not answer: {e}"


async def redis_ok(settings: Settings) -> tuple[bool, str]:
    client = RedisFactory(settings, "worker").commands(max_connections=1)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await client.ping()
        return True, "Redis answers"
    except Exception as e:
        return False, f"Redis does not answer: {type(e).__name__}"
    finally:
        await client.aclose()


def check(settings: Settings, role: str | None, port: int | None) -> int:
    command, options = pid1_command()
    role = role or command
    if role == "gateway":
        port = port or int(options.get("--port", "8000"))
        healthy, why = http_ok(f"http://127.0.0.1:{port}/readyz")
    elif role == "worker":
        healthy, why = asyncio.run(redis_ok(settings))
        metrics_port = port or int(options.get("--metrics-port", settings.worker_metrics_port))
        if healthy and metrics_port:
            healthy, why = http_ok(f"http://127.0.0.1:{metrics_port}/metrics")
    else:
        healthy, why = True, f"nothing to check for {role or 'this process'!r}"
    print(("healthy: " if healthy else "unhealthy: ") + why)
    return 0 if healthy else 1
