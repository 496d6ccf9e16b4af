"""`python -m service watch` and `python -m service submit`: the Python client from a shell.

`watch` prints each event as one JSON line and exits 0 after `done`, 1 after `failed`, 2 when
the watch ends with an error (printed to stderr), including no gateway answering at its URL
for `--give-up-after` seconds. Reconnects and resumes like `client.watch`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

# How long `watch` tries a URL where no gateway has answered yet: long enough for a gateway
# that is starting, short enough that a wrong URL is said to be wrong.
GIVE_UP_AFTER_S = 30.0


def add_arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Resolved by the client when absent; this module imports nothing heavy (every command's
    # parser is built from it).
    url = None
    url_help = "the gateway's base URL (default: $RESULTCAST_URL, else http://127.0.0.1:8000)"
    watch = commands.add_parser("watch", help="print a job's events as JSON lines")
    watch.add_argument("job", help="the job id")
    watch.add_argument(
        "--token", required=True, help="the job's watch token (--token=T: it may start with -)"
    )
    watch.add_argument("--after", help="start after this event id (default: from the first)")
    watch.add_argument("--url", default=url, help=url_help)
    watch.add_argument(
        "--give-up-after",
        type=float,
        default=GIVE_UP_AFTER_S,
        metavar="SECONDS",
        help="exit 2 when no gateway has answered at --url for this long (default "
        f"{GIVE_UP_AFTER_S:g}); once one has, reconnect for as long as it takes",
    )
    watch.add_argument(
        "--transport",
        choices=("auto", "ws", "sse"),
        default="auto",
        help="WebSocket, Server-Sent Events, or a WebSocket that falls back to SSE when "
        "upgrades are refused (default: auto)",
    )

    submit = commands.add_parser("submit", help="submit a job; prints {job, token} as JSON")
    submit.add_argument("kind", help="the job kind, e.g. count")
    submit.add_argument("payload", nargs="?", default="{}", help="the payload, a JSON object")
    submit.add_argument("--url", default=url, help=url_help)
    submit.add_argument(
        "--api-key", default=os.environ.get("RESULTCAST_API_KEY"), help="(or $RESULTCAST_API_KEY)"
    )


async def _watch(args: argparse.Namespace) -> int:
    from service.client import WatchError, watch

    said = ""  # the last connection failure printed: one line per reason, not per attempt
    failing = False

    def connect_failed(url: str, reason: str) -> None:
        nonlocal said, failing
        failing = True
        if reason != said:
            said = reason
            print(f"watch: cannot connect to {url}: {reason}; retrying", file=sys.stderr)

    def reconnecting(last_id: str | None, delay_s: float) -> None:
        nonlocal failing
        if failing:  # already said why; the retries themselves are not news
            failing = False
            return
        where = f"after {last_id}" if last_id else "from the first event"
        print(f"watch: reconnecting in {delay_s:.1f} s, resuming {where}", file=sys.stderr)

    try:
        async for event in watch(
            args.job,
            args.token,
            args.after,
            base=args.url,
            transport=args.transport,
            on_reconnect=reconnecting,
            on_connect_error=connect_failed,
            give_up_after_s=args.give_up_after,
        ):
            print(json.dumps(event, separators=(",", ":")), flush=True)
            if event["event"] == "failed":
                return 1
    except WatchError as e:
        print(f"watch: ended: {e}", file=sys.stderr)
        return 2
    return 0


async def _submit(args: argparse.Namespace) -> int:
    from service.client import ClientError, Unreachable, submit

    try:
        payload = json.loads(args.payload)
    except ValueError as e:
        print(f"submit: the payload is not JSON: {e}", file=sys.stderr)
        return 2
    try:
        job = await submit(args.kind, payload, base=args.url, api_key=args.api_key)
    except ClientError as e:
        print(f"submit: refused: {e}", file=sys.stderr)
        return 2
    except Unreachable as e:
        print(f"submit: {e}; is the gateway running there? (--url)", file=sys.stderr)
        return 2
    print(json.dumps({"job": job.job, "token": job.token}))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        import service.client  # noqa: F401 (httpx and websockets present?)
    except ImportError as e:
        print(
            f"{args.command}: needs the client's packages ({e.name} is missing); resultcast "
            "is not on PyPI: from a checkout, pip install -e '.[client]'; from a wheel "
            "(pip wheel --no-deps .), pip install 'resultcast-<version>-py3-none-any.whl[client]'",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(_watch(args) if args.command == "watch" else _submit(args))
