"""`DELIVERY_MODE=pubsub`: a live source with one pattern subscription per gateway process.

One connection, subscribed to every job's channel with `PSUBSCRIBE`, read by one task that
hands each frame to the hub and never waits on a client. Frames for jobs nobody here watches
cost one dict lookup. Following a job costs nothing: the pattern covers every job.

Pub/Sub is fire-and-forget: whatever is published while the subscriber is not subscribed is
lost to it. So every (re)subscription is an event: each job with local watchers catches up
from its stream. redis-py may reconnect and re-subscribe on its own without raising; a
subscribe confirmation after the first one is therefore treated as a reconnect too. A
connection can also look alive and deliver nothing (a half-open TCP connection, a proxy that
dropped it): after `PROBE_AFTER_S` without any message the gateway publishes to a probe channel
of its own and reconnects if the probe does not come back within `PROBE_TIMEOUT_S`. That probe
is the only Redis command an idle gateway sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import redis.asyncio as redis

from service.aio import stop_tasks
from service.config import Settings
from service.delivery.base import CatchUpCause, LiveSink
from service.delivery.replies import NOT_ENOUGH_DATA, Replies
from service.delivery.supervise import restart_forever
from service.keys import Keys
from service.model import RedisUnavailable
from service.redis_client import UNAVAILABLE_MESSAGE, RedisFactory
from service.stats import GatewayStats

log = logging.getLogger(__name__)

PMESSAGE = b"pmessage"
PSUBSCRIBE = b"psubscribe"
YIELD_EVERY = 64
# Job ids of the channels seen last: a dict lookup instead of slicing and decoding the name
# (0.27 µs) for every frame; forgotten all at once when full, so it stays below ~1 MiB.
JOB_NAMES_KEPT = 4096


class SubscriberSilent(ConnectionError):
    """The subscriber heard nothing, not even its own probe: treated as a lost connection."""


class PatternSubscriber:
    """The one subscriber connection; `restart_forever` reconnects it."""

    def __init__(
        self,
        settings: Settings,
        factory: RedisFactory,
        commands: redis.Redis,
        sink: LiveSink,
        stats: GatewayStats,
    ) -> None:
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._client = factory.subscriber()
        self._commands = commands
        self._sink = sink
        self._stats = stats
        self.gateway_id = secrets.token_hex(4)
        self._probe_channel = self._keys.probe_channel(self.gateway_id).encode()
        self.connected = False
        self._subscribed_once = False
        self._last_message = 0.0
        self._probe_sent_at: float | None = None
        self._listener: asyncio.Task[None] | None = None
        self._connected_this_round = False
        self._subscribed_at = 0.0
        self._loop = asyncio.get_running_loop()

    async def connect_and_listen(self) -> None:
        """One connection: subscribe, hand frames over until it is lost, then raise (the
        supervisor reconnects). The watchdog ends one that hears nothing, its probe included."""
        self._connected_this_round = False
        self._listener = asyncio.create_task(self._listen(), name="subscriber")
        try:
            await self._listener
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being stopped, not just the listener
            self._not_subscribed()
            raise SubscriberSilent("it received nothing, not even its probe") from None
        except Exception:
            self._not_subscribed()
            raise

    def _not_subscribed(self) -> None:
        """Not even subscribed: no live frame can arrive. Each watch is told once per outage
        (the hub keeps count) and goes on by itself once Redis answers."""
        if not self._connected_this_round:
            self._sink.report(None, RedisUnavailable(UNAVAILABLE_MESSAGE))

    def worked(self) -> bool:
        """Whether the last connection was subscribed for a while before it was lost (a
        proxy's timeout, CLIENT KILL, a failover): its watchers are waiting, so reconnect at
        once rather than after a back-off."""
        return self._connected_this_round and self._loop.time() - self._subscribed_at > 1.0

    async def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            # The subscriber's socket has no read timeout, so bound the subscribe itself: a
            # connection that cannot even confirm it is no better than a dead one.
            timeout_s = self._settings.redis_connect_timeout_s + self._settings.probe_timeout_s
            async with asyncio.timeout(timeout_s):
                await pubsub.psubscribe(self._keys.channel_pattern)
                reply: Any = await pubsub.parse_response(block=True)
            if reply[0] != PSUBSCRIBE:
                raise ConnectionError(f"expected a psubscribe confirmation, got {reply[0]!r}")
            self._last_message = self._loop.time()
            self._on_subscribed()
            # From here on, read the connection itself: PubSub's per-message layers (health
            # check, retry, reconnect-and-resubscribe) cost a fifth of a busy gateway's CPU,
            # the connection's own a tenth (service.delivery.replies), and a lost connection
            # is ours to handle (the supervisor reconnects and catches up).
            connection = pubsub.connection
            if connection is None:
                raise ConnectionError("the subscriber connection went away")
            await self._hand_over(Replies(connection))
        finally:
            self.connected = False
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _hand_over(self, replies: Replies) -> None:
        """Every frame received to the hub, until the connection is lost: the hot path."""
        loop, keys, sink, probe = self._loop, self._keys, self._sink, self._probe_channel
        next_reply, receive, publish = replies.next, replies.receive, sink.publish
        jobs: dict[bytes, str] = {}
        handled = 0
        while True:
            reply = next_reply()
            if reply is NOT_ENOUGH_DATA:
                await receive()
                self._last_message = loop.time()
                continue
            handled += 1
            if handled % YIELD_EVERY == 0:
                # Replies already buffered are parsed without awaiting I/O: let the
                # session writers run now and then during a burst.
                await asyncio.sleep(0)
            kind = reply[0]
            if kind == PMESSAGE:
                channel = reply[2]
                if channel == probe:
                    self._probe_sent_at = None
                    continue
                job = jobs.get(channel)
                if job is None:
                    if len(jobs) >= JOB_NAMES_KEPT:
                        jobs.clear()
                    job = jobs[channel] = keys.job_of_channel(channel)
                try:
                    publish(job, reply[3])
                except Exception:
                    self._delivery_failed(job)
            elif kind == PSUBSCRIBE:
                self._on_subscribed()

    def _delivery_failed(self, job: str) -> None:
        """A frame the hub failed on: a bug in delivery, not in the connection. Keep reading,
        and have this one job read from its stream rather than reconnecting and re-reading
        every job."""
        self._stats.delivery_errors += 1
        log.exception("delivering a frame of job %s failed; catching the job up", job)
        self._sink.missed([job], CatchUpCause.GAP)

    def _on_subscribed(self) -> None:
        """Anything published before this moment may have been missed: catch up every job."""
        self.connected = self._connected_this_round = True
        self._subscribed_at = self._loop.time()
        self._probe_sent_at = None
        if self._subscribed_once:
            self._stats.subscriber_reconnects += 1
            log.info("subscriber re-subscribed; catching up every watched job")
        else:
            log.info("subscriber connected")
        self._sink.missed(
            None, CatchUpCause.RECONNECT if self._subscribed_once else CatchUpCause.SUBSCRIBE
        )
        self._subscribed_once = True

    async def watchdog(self) -> None:
        """Probe a quiet subscriber; restart one that does not hear its own probe."""
        loop = asyncio.get_running_loop()
        interval = min(self._settings.probe_after_s, self._settings.probe_timeout_s) / 2
        while True:
            await asyncio.sleep(interval)
            if not self.connected:
                continue
            now = loop.time()
            if self._probe_sent_at is not None:
                if now - self._probe_sent_at > self._settings.probe_timeout_s:
                    self._probe_sent_at = None
                    if self._listener is not None:
                        self._listener.cancel()
            elif now - self._last_message > self._settings.probe_after_s:
                self._probe_sent_at = now
                self._stats.probes_sent += 1
                try:
                    await self._commands.publish(self._probe_channel, b"probe")
                except Exception as e:
                    log.warning("could not publish the subscriber probe: %s", e)

    async def close(self) -> None:
        await self._client.aclose()


class PubSubSource:
    """The `pubsub` live source: the subscriber and its watchdog, both supervised."""

    mode = "pubsub"

    def __init__(
        self, settings: Settings, factory: RedisFactory, commands: redis.Redis, stats: GatewayStats
    ) -> None:
        self._settings = settings
        self._factory = factory
        self._commands = commands
        self._stats = stats
        self.subscriber: PatternSubscriber | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, sink: LiveSink) -> None:
        subscriber = PatternSubscriber(
            self._settings, self._factory, self._commands, sink, self._stats
        )
        self.subscriber = subscriber
        self._tasks = [
            asyncio.create_task(
                restart_forever(
                    "the subscriber",
                    subscriber.connect_and_listen,
                    worked=subscriber.worked,
                ),
                name="subscriber-supervisor",
            ),
            asyncio.create_task(
                restart_forever("the subscriber's watchdog", subscriber.watchdog),
                name="subscriber-watchdog",
            ),
        ]

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        if self.subscriber is not None:
            await self.subscriber.close()

    def describe(self) -> dict[str, Any]:
        subscriber = self.subscriber
        if subscriber is None:
            return {"source": "pubsub", "connected": False}
        return {
            "source": "pubsub",
            "connected": subscriber.connected,
            "gateway_id": subscriber.gateway_id,
            "reconnects": self._stats.subscriber_reconnects,
            "probes_sent": self._stats.probes_sent,
        }

    def ready(self) -> bool:
        return self.subscriber is not None and self.subscriber.connected

    def follow(self, job: str, after_seq: int) -> None:
        pass  # the pattern subscription already covers every job

    def unfollow(self, job: str) -> None:
        pass
