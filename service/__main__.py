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

    gateway = commands.add_parser("gateway", help="run the HTTP and WebSocket gateway")
    gateway.add_argument("--host", default="127.0.0.1", help="bind host (default 127.0.0.1)")
    gateway.add_argument("--port", type=int, default=8000, help="bind port (default 8000)")

    worker = commands.add_parser("worker", help="run a job worker")
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
    logs.configure(settings.log_level)
    try:
        return _run(args, settings)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


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
