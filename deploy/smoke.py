"""End-to-end check of a deployed stack, from a container on its network (used by CI).

Submits a `count` job over HTTP, watches it over WebSocket and checks that every event arrives
exactly once, in order; then keeps the socket open, prints WAITING, and expects the gateway to
close it with 1001 when it is stopped. Standard library and `websockets` (in the image) only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

BASE = os.environ.get("GATEWAY_URL", "http://gateway:8000")
N = 50


def say(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def wait_ready(deadline_s: float = 90.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"{BASE}/readyz", timeout=3) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"smoke: {BASE}/readyz did not answer 200 within {deadline_s} s")
        time.sleep(0.5)


def submit() -> tuple[str, str]:
    body = json.dumps({"kind": "count", "payload": {"n": N, "interval_ms": 20}}).encode()
    request = urllib.request.Request(
        f"{BASE}/jobs", body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        answer = json.load(reply)
    return answer["job"], answer["token"]


def main() -> int:
    wait_ready()
    job, token = submit()
    say(f"submitted job {job}")
    with connect(BASE.replace("http", "ws", 1) + "/ws", open_timeout=10) as ws:
        ws.send(json.dumps({"op": "watch", "job": job, "token": token}))
        seqs: list[int] = []
        while True:
            frame = json.loads(ws.recv(timeout=30))
            if frame["type"] == "error":
                sys.exit(f"smoke: error frame {frame}")
            if frame["type"] != "event":
                continue
            seqs.append(frame["seq"])
            if frame["event"] in ("done", "failed"):
                break
        if seqs != list(range(1, N + 2)) or frame["event"] != "done":
            sys.exit(f"smoke: expected seqs 1..{N + 1} ending in done, got {seqs}")
        say(f"received all {len(seqs)} events exactly once, in order")
        say("WAITING for the gateway to stop")
        try:
            while True:
                ws.recv(timeout=120)
        except ConnectionClosed:
            pass
        except TimeoutError:
            sys.exit("smoke: the gateway did not close the socket within 120 s")
        code = ws.close_code
    if code != 1001:
        sys.exit(f"smoke: expected close code 1001, got {code}")
    say("the gateway closed the socket with 1001")
    return 0


if __name__ == "__main__":
    sys.exit(main())
