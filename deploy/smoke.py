"""End-to-end check of a deployed stack, from a container on its network (used by CI).

SMOKE_MODE=close: submits a `count` job over HTTP, watches it over WebSocket and checks that
every event arrives exactly once, in order; then keeps the socket open, prints WAITING, and
expects the gateway to close it with 1001 when it is stopped.

SMOKE_MODE=resume (through the two-gateway proxy): watches a longer job, prints WAITING once
events flow, and while gateways are restarted under it, reconnects through the proxy and
resumes with `after` = the last id it saw; checks every event arrived exactly once, in order,
and that it did have to resume; then reads a job as Server-Sent Events through the proxy,
every event once and as it happens (not buffered). Standard library and `websockets` (in the
image) only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

BASE = os.environ.get("GATEWAY_URL", "http://gateway:8000")
SOCKET_URL = BASE.replace("http", "ws", 1) + "/ws"
N = 50
RESUME_N = 600  # 30 s of events: longer than restarting both gateways


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


def submit(n: int, interval_ms: int) -> tuple[str, str]:
    body = json.dumps({"kind": "count", "payload": {"n": n, "interval_ms": interval_ms}}).encode()
    request = urllib.request.Request(
        f"{BASE}/jobs", body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        answer = json.load(reply)
    return answer["job"], answer["token"]


def close_mode() -> int:
    job, token = submit(N, 20)
    say(f"submitted job {job}")
    with connect(SOCKET_URL, open_timeout=10) as ws:
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


def resume_mode() -> int:
    seqs: list[int] = []
    closes: list[int | None] = []
    job = token = last_id = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with connect(SOCKET_URL, open_timeout=15) as ws:
                if job is None:
                    # Submitted once the socket is open, so the job is still running when its
                    # first events arrive and the gateways are restarted under it.
                    job, token = submit(RESUME_N, 50)
                    say(f"submitted job {job} through {BASE}")
                ws.send(json.dumps({"op": "watch", "job": job, "token": token, "after": last_id}))
                while True:
                    frame = json.loads(ws.recv(timeout=30))
                    if frame["type"] == "error" and frame["code"] not in ("busy", "unavailable"):
                        sys.exit(f"smoke: error frame {frame}")
                    if frame["type"] != "event":
                        continue
                    expected = len(seqs) + 1
                    if frame["seq"] != expected:  # a duplicate or a hole
                        sys.exit(f"smoke: expected seq {expected}, got {frame['seq']}")
                    seqs.append(frame["seq"])
                    last_id = frame["id"]
                    if len(seqs) == 20:
                        say("WAITING for the gateways to restart")
                    if frame["event"] in ("done", "failed"):
                        break
            break
        except ConnectionClosed as e:
            closes.append(e.rcvd.code if e.rcvd else None)
            say(f"socket closed ({closes[-1]}) after seq {seqs[-1] if seqs else 0}; resuming")
        except (OSError, InvalidHandshake, TimeoutError) as e:
            say(f"reconnecting: {type(e).__name__}")
            time.sleep(0.3)
    if seqs != list(range(1, RESUME_N + 2)):
        sys.exit(f"smoke: expected seqs 1..{RESUME_N + 1} once each, got {len(seqs)}: {seqs}")
    if not closes:
        sys.exit("smoke: the socket was never closed: no gateway restart was seen")
    say(f"all {len(seqs)} events exactly once, in order, across {len(closes)} close(s) {closes}")
    return sse_check()


def sse_check() -> int:
    """A Server-Sent Events stream through the same proxy: every event once, in order, and
    each as it happens (the proxy must not buffer the stream until it ends)."""
    n, interval_ms = 40, 50
    job, token = submit(n, interval_ms)
    url = f"{BASE}/jobs/{job}/events?token={token}"
    seqs: list[int] = []
    arrived: list[float] = []
    with urllib.request.urlopen(url, timeout=30) as reply:
        if not reply.headers.get("Content-Type", "").startswith("text/event-stream"):
            sys.exit(f"smoke: SSE answered {reply.headers.get('Content-Type')}")
        for raw in reply:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                seqs.append(json.loads(line[6:])["seq"])
                arrived.append(time.monotonic())
    if seqs != list(range(1, n + 2)):
        sys.exit(f"smoke: SSE expected seqs 1..{n + 1} once each, got {seqs}")
    spread_s = arrived[-1] - arrived[0]
    if spread_s < n * interval_ms / 1000 / 2:  # all at once: something buffered the stream
        sys.exit(f"smoke: SSE events arrived within {spread_s:.2f} s: the stream was buffered")
    say(f"SSE through {BASE}: {len(seqs)} events exactly once, as they happened ({spread_s:.1f} s)")
    return 0


def main() -> int:
    wait_ready()
    return resume_mode() if os.environ.get("SMOKE_MODE") == "resume" else close_mode()


if __name__ == "__main__":
    sys.exit(main())
