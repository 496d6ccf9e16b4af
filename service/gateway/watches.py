"""The watch protocol of one client, whatever transport carries it.

Ops (watch, unwatch, ping), tokens, per-client limits and bad-frame accounting live here, once;
a transport (the WebSocket in `ws.py`) only turns its bytes into `receive_text` calls and
carries out `close`. `Watches` is the `Watcher` the hub delivers to: frames go to its outbox,
which owns flow control.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from service import codec, tokens
from service.config import Settings
from service.delivery.base import Delivery
from service.gateway.outbox import Outbox, SendClose, SendFrame, WriteNow
from service.gateway.protocol import BadFrame, CloseCode, PingOp, UnwatchOp, WatchOp, parse
from service.model import ErrorCode
from service.stats import GatewayStats

log = logging.getLogger(__name__)

BAD_FRAME_WINDOW_S = 60.0

Close = Callable[[CloseCode, str], None]


class Watches:
    """One client's watches: implements `Watcher` for the delivery."""

    # Thousands of these live at once, mostly idle: slots keep each one small.
    __slots__ = (
        "__weakref__",
        "_bad_frames",
        "_close",
        "_delivery",
        "_loop",
        "_settings",
        "_stats",
        "deliver",
        "outbox",
        "watching",
    )

    def __init__(
        self,
        send_frame: SendFrame,
        send_close: SendClose,
        *,
        close: Close,
        delivery: Delivery,
        settings: Settings,
        stats: GatewayStats,
        write_now: WriteNow | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._close = close
        self._loop = loop or asyncio.get_running_loop()
        self._delivery = delivery
        self._settings = settings
        self._stats = stats
        self.outbox = Outbox(
            send_frame,
            send_close,
            limit_bytes=settings.max_send_queue_bytes,
            stall_timeout_s=settings.send_stall_timeout_s,
            stats=stats,
            on_drained=self._drained,
            on_stalled=self._stalled,
            write_now=write_now,
            loop=self._loop,
        )
        # `Watcher.deliver`, the outbox's own: one call less for every frame delivered.
        self.deliver: Callable[[bytes], bool] = self.outbox.offer
        self.watching: set[str] = set()
        self._bad_frames: deque[float] | None = None

    # -- Watcher (and `deliver`, set in __init__) ----------------------------------------------

    def room(self) -> int:
        return self.outbox.room()

    def watch_failed(self, job: str, code: ErrorCode, message: str) -> None:
        self.outbox.put(codec.error(code, message, job))

    def watch_ended(self, job: str) -> None:
        self.watching.discard(job)

    def watch_finished(self, job: str) -> None:
        self.outbox.put(codec.unwatched(job))

    def _drained(self) -> None:
        self._delivery.drained(self)

    def _stalled(self) -> None:
        if self.outbox.closing:
            return  # its close is queued: the session ends it within SHUTDOWN_GRACE_S
        self._stats.slow_client_closes += 1
        log.info(
            "closing a client that accepted nothing for %.0fs (%d bytes waiting)",
            self._settings.send_stall_timeout_s,
            self.outbox.backlog_bytes,
        )
        self.outbox.drop_queued()  # the stream still holds them; the client resumes with after
        self._close(CloseCode.TRY_LATER, "accepted nothing for too long: reconnect and resume")

    # -- what the client sends -----------------------------------------------------------------

    def receive_text(self, text: str) -> None:
        try:
            op = parse(text)
        except BadFrame as e:
            self.bad_frame(e)
            return
        if isinstance(op, PingOp):
            self.outbox.put(codec.PONG)
        elif isinstance(op, WatchOp):
            self._watch(op)
        else:
            self._unwatch(op)

    def bad_frame(self, error: BadFrame) -> None:
        """Answer a frame that breaks the protocol; too many in a minute close the client."""
        self._stats.bad_frames += 1
        now = self._loop.time()
        if self._bad_frames is None:
            self._bad_frames = deque()
        window = self._bad_frames
        window.append(now)
        while window and window[0] < now - BAD_FRAME_WINDOW_S:
            window.popleft()
        if len(window) > self._settings.max_bad_frames_per_min:
            self._close(CloseCode.POLICY, "too many bad frames")
            return
        self.outbox.put(codec.error(ErrorCode.BAD_REQUEST, error.message, error.job))

    def end(self) -> None:
        """The client is gone: stop every watch, and let go of the session (its `close`, and
        through the outbox its sends) so that reference counting frees the connection."""
        for job in list(self.watching):
            self._delivery.unwatch(job, self)
        self.watching.clear()
        self.outbox.release()
        self._close = _closed

    def _watch(self, op: WatchOp) -> None:
        # The token comes first: a wrong one learns nothing about the job.
        if not tokens.verify(op.job, op.token, self._settings.token_keys):
            self.outbox.put(
                codec.error(ErrorCode.UNAUTHORIZED, "the token is not valid for this job", op.job)
            )
            return
        if op.job in self.watching:
            self._delivery.unwatch(op.job, self)  # watching again: start over from `after`
        elif len(self.watching) >= self._settings.max_watches_per_socket:
            limit = self._settings.max_watches_per_socket
            self.outbox.put(
                codec.error(
                    ErrorCode.TOO_MANY_WATCHES, f"this socket already watches {limit} jobs", op.job
                )
            )
            return
        self.watching.add(op.job)
        self.outbox.put(codec.watching(op.job))
        self._delivery.watch(op.job, self, op.after_seq)

    def _unwatch(self, op: UnwatchOp) -> None:
        if op.job in self.watching:
            self._delivery.unwatch(op.job, self)
            self.watching.discard(op.job)
            self.outbox.put(codec.unwatched(op.job))
        else:
            self.outbox.put(
                codec.error(ErrorCode.NOT_FOUND, "this socket does not watch that job", op.job)
            )


def _closed(code: CloseCode, reason: str = "") -> None:
    """An ended client's `close`: it is closed already."""
