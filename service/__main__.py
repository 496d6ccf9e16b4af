"""`python -m service <command>`: the gateway, a worker, migrations, the local dev stack, and
the client commands (`submit`, `watch`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from service import logs
from service.config import ConfigError, Settings

log = logging.getLogger("service")


# What `--help` of the server commands shows of the environment; docs/configuration.md has
# every variable.
_ENVIRONMENT = """environment (the most used; all are in docs/configuration.md):
  REDIS_URL        redis:// or rediss:// URL, password in the URL (default
                   redis://127.0.0.1:6379/0)
  SECRET_KEY       signs watch tokens; every gateway needs the same one (required)
  DELIVERY_MODE    pubsub (default) or xread
  REDIS_CLUSTER    true when REDIS_URL names a node of a Redis Cluster
  API_KEYS         comma-separated keys POST /jobs requires (default: open)
  KEY_PREFIX       prefix of every key and channel (default rc)
  LOG_LEVEL        DEBUG, INFO (default), WARNING, ERROR"""

_WORKER_ENVIRONMENT = """environment (the most used; all are in docs/configuration.md):
  REDIS_URL          redis:// or rediss:// URL, password in the URL
  JOB_TIMEOUT_S      a job running longer is failed (default 600)
  JOB_VISIBILITY_S   a dead worker's job is claimed after this long (default 30)
  WORKER_METRICS_PORT  serve /metrics on this port (default 0: off)
  KEY_PREFIX, REDIS_CLUSTER, JOB_STREAMS, LOG_LEVEL: as for the gateway"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="resultcast: job results to WebSocket clients through Redis.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="run the whole stack locally (Redis, gateway, 2 workers)")
    dev.add_argument("--host", default="127.0.0.1", help="gateway host (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    dev.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")

    gateway = commands.add_parser(
        "gateway",
        help="run the HTTP and WebSocket gateway",
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gateway.add_argument("--host", default="127.0.0.1", help="bind host (default 127.0.0.1)")
    gateway.add_argument("--port", type=int, default=8000, help="bind port (default 8000)")
    # `dev` announces the one URL to open; its gateway does not log uvicorn's own.
    gateway.add_argument("--no-banner", action="store_true", help=argparse.SUPPRESS)

    worker = commands.add_parser(
        "worker",
        help="run a job worker",
        epilog=_WORKER_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("--concurrency", type=int, default=4, help="jobs at once (default 4)")
    worker.add_argument(
        "--handlers",
        default=None,
        metavar="MODULE:ATTR",
        help="a mapping of job kind to async handler, added to the built-ins",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (default: WORKER_METRICS_PORT, 0 = off)",
    )

    bench = commands.add_parser(
        "bench",
        help="A/B benchmark of the delivery modes (private Redis, real processes)",
        description="Runs the same workload against each delivery mode and prints a "
        "side-by-side table; writes a JSON file and a PNG chart.",
    )
    from service.bench import add_arguments

    add_arguments(bench)

    from service.client_cli import add_arguments as add_client_arguments

    add_client_arguments(commands)

    health = commands.add_parser(
        "healthcheck", help="exit 0 when this container's process is healthy (image HEALTHCHECK)"
    )
    health.add_argument("--role", choices=["gateway", "worker"], help="default: what PID 1 runs")
    health.add_argument("--port", type=int, help="gateway port, or a worker's metrics port")

    migrate = commands.add_parser("migrate", help="apply pending Redis layout migrations")
    migrate.add_argument("--status", action="store_true", help="list migrations and exit")
    migrate.add_argument("--dry-run", action="store_true", help="show what would be applied")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("watch", "submit"):  # clients of a gateway: no server settings
        from service.client_cli import run

        try:
            return run(args)
        except KeyboardInterrupt:
            return 130
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    logs.configure(
        settings.log_level,
        banner=not getattr(args, "no_banner", False),
        json=settings.log_format == "json",
    )
    from redis.exceptions import RedisError

    from service.model import RedisUnavailable

    try:
        return _run(args, settings)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except (RedisError, RedisUnavailable) as e:
        # Only a start can get here: once running, the gateway and workers ride out Redis
        # outages by themselves. A process that cannot start says why, once, and exits, so
        # that whatever supervises it (compose, Kubernetes, systemd) restarts it with back-off.
        print(f"{args.command}: {redis_unreachable(settings.redis_url, e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def redis_unreachable(url: str, error: BaseException) -> str:
    """One line: what was tried, what failed, what to check."""
    while error.__cause__ is not None:  # the driver's own words, not our mapping of them
        error = error.__cause__
    cause = (str(error) or type(error).__name__).rstrip(".")
    hint = (
        "check the user and password in REDIS_URL"
        if "auth" in cause.lower() or "password" in cause.lower()
        else "is Redis running there, and is REDIS_URL right?"
    )
    return f"cannot reach Redis at {logs.redact(url)}: {cause}; {hint}"


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from service.migrate import MigrationError

    try:
        if args.command == "gateway":
            from service.gateway.server import serve

            return serve(settings, host=args.host, port=args.port)
        if args.command == "worker":
            port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
            return _worker(settings, args.concurrency, args.handlers, port)
        if args.command == "migrate":
            from service.migrate_cli import run_migrate

            return asyncio.run(run_migrate(settings, status_only=args.status, dry_run=args.dry_run))
        if args.command == "healthcheck":
            from service.healthcheck import check

            return check(settings, args.role, args.port)
        if args.command == "bench":
            from service.bench import main as bench_main

            return bench_main(args)
        if args.command == "dev":
            from service.dev import run_dev

            return run_dev(host=args.host, port=args.port, workers=args.workers)
    except MigrationError as e:
        log.error("%s", e)
        return 3
    raise AssertionError(f"unknown command {args.command}")


def _worker(
    settings: Settings, concurrency: int, handlers_spec: str | None, metrics_port: int
) -> int:
    from service.handlers import load_handlers
    from service.worker import run_worker

    if concurrency < 1:
        raise ConfigError(f"--concurrency: expected a positive integer, got {concurrency}")
    try:
        handlers = load_handlers(handlers_spec)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    asyncio.run(run_worker(settings, handlers, concurrency, metrics_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
