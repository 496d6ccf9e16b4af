"""Settings: one frozen object, read from the environment once at start-up.

Every name carries its unit. A missing or malformed value raises `ConfigError` naming the
variable, what was expected and what came, so a process refuses to start rather than run with a
half-understood configuration. Secrets are kept out of `repr` so a logged settings object never
leaks them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

DeliveryMode = Literal["pubsub", "xread"]
DELIVERY_MODES: tuple[DeliveryMode, ...] = ("pubsub", "xread")

MiB = 1024 * 1024

T = TypeVar("T")


class ConfigError(Exception):
    """A setting is missing or malformed."""


def _int(text: str) -> int:
    return int(text.strip().replace("_", ""))


def _float(text: str) -> float:
    return float(text.strip())


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def _mode(text: str) -> DeliveryMode:
    value = text.strip().lower()
    if value not in DELIVERY_MODES:
        raise ValueError(f"one of {', '.join(DELIVERY_MODES)}")
    return value


LOG_FORMATS = ("text", "json")
WEBSOCKET_SENDS = ("fast", "asgi")


def _websocket_send(text: str) -> str:
    value = text.strip().lower()
    if value not in WEBSOCKET_SENDS:
        raise ValueError(f"one of {', '.join(WEBSOCKET_SENDS)}")
    return value


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"one of {', '.join(LOG_FORMATS)}")
    return value


def _redis_url(text: str) -> str:
    value = text.strip()
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("a URL starting with redis://, rediss:// or unix://")
    return value


def _addresses(text: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (an IPv6 host in brackets: `[::1]:7000`)."""
    found = []
    for part in _list(text):
        host, colon, port = part.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("a list of host:port")
        found.append((host, int(port)))
    return tuple(found)


def _env(name: str, parse: Callable[[str], Any], *, secret: bool = False) -> Any:
    return field(metadata={"env": name, "parse": parse}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Everything a process needs to know, with the contract's defaults."""

    redis_url: str = _env("REDIS_URL", _redis_url, secret=True)
    delivery_mode: DeliveryMode = _env("DELIVERY_MODE", _mode)
    # REDIS_URL names one node of a Redis Cluster; every process discovers the rest.
    redis_cluster: bool = _env("REDIS_CLUSTER", _bool)
    # More nodes of that cluster to start from when the REDIS_URL one does not answer.
    redis_cluster_nodes: tuple[tuple[str, int], ...] = _env("REDIS_CLUSTER_NODES", _addresses)
    # Job intake is spread over this many streams, each with its own hash tag (shard).
    job_streams: int = _env("JOB_STREAMS", _int)
    secret_key: str = _env("SECRET_KEY", str, secret=True)
    # Older keys still accepted for tokens while a rotation is under way; the first key signs.
    secret_key_fallbacks: tuple[str, ...] = _env("SECRET_KEY_FALLBACKS", _list, secret=True)
    api_keys: tuple[str, ...] = _env("API_KEYS", _list, secret=True)
    # Bearer key of GET /admin/stats; empty: the admin view does not exist (404).
    admin_key: str = _env("ADMIN_KEY", str, secret=True)
    idle_timeout_s: float = _env("IDLE_TIMEOUT_S", _float)
    sse_keepalive_s: float = _env("SSE_KEEPALIVE_S", _float)
    result_ttl_s: int = _env("RESULT_TTL_S", _int)
    key_prefix: str = _env("KEY_PREFIX", str)
    log_level: str = _env("LOG_LEVEL", str)
    # `json`: one object per line (time, level, logger, message and the line's fields).
    log_format: str = _env("LOG_FORMAT", _log_format)

    # Redis connections.
    redis_socket_timeout_s: float = _env("REDIS_SOCKET_TIMEOUT_S", _float)
    redis_connect_timeout_s: float = _env("REDIS_CONNECT_TIMEOUT_S", _float)
    redis_max_connections: int = _env("REDIS_MAX_CONNECTIONS", _int)

    # HTTP and WebSocket limits.
    max_body_bytes: int = _env("MAX_BODY_BYTES", _int)
    max_frame_bytes: int = _env("MAX_FRAME_BYTES", _int)
    max_bad_frames_per_min: int = _env("MAX_BAD_FRAMES_PER_MIN", _int)
    max_watches_per_socket: int = _env("MAX_WATCHES_PER_SOCKET", _int)
    max_send_queue_bytes: int = _env("MAX_SEND_QUEUE_BYTES", _int)
    send_stall_timeout_s: float = _env("SEND_STALL_TIMEOUT_S", _float)
    # The kernel's send buffer per connection (SO_SNDBUF). 0 leaves Linux's autotuning, which
    # lets each connection that stops reading hold up to `net.ipv4.tcp_wmem`'s maximum (4 MiB
    # here); 256 KiB cost no delivered event/s on loopback (docs/security.md) and bound one
    # stuck client to about twice that (the kernel doubles it), for about 5 MB/s per
    # connection at 50 ms round trip.
    socket_send_buffer_bytes: int = _env("SOCKET_SEND_BUFFER_BYTES", _int)
    # `fast`: event frames written by our own send path under uvicorn; `asgi`: uvicorn's own.
    websocket_send: str = _env("WEBSOCKET_SEND", _websocket_send)
    max_sockets: int = _env("MAX_SOCKETS", _int)
    allowed_origins: tuple[str, ...] = _env("ALLOWED_ORIGINS", _list)
    catch_up_page_size: int = _env("CATCH_UP_PAGE_SIZE", _int)
    max_replay_events: int = _env("MAX_REPLAY_EVENTS", _int)
    shutdown_grace_s: float = _env("SHUTDOWN_GRACE_S", _float)
    # A connection must complete its request's headers this soon after it opens (or after
    # its previous response): silent and trickling connections cannot pile up.
    request_header_timeout_s: float = _env("REQUEST_HEADER_TIMEOUT_S", _float)
    # A request's body must arrive in full this soon after its headers (slow-body attacks).
    request_body_timeout_s: float = _env("REQUEST_BODY_TIMEOUT_S", _float)

    # Pub/Sub liveness probe: sent only after this long without any message.
    probe_after_s: float = _env("PROBE_AFTER_S", _float)
    probe_timeout_s: float = _env("PROBE_TIMEOUT_S", _float)

    # XREAD mode (the old design).
    xread_block_ms: int = _env("XREAD_BLOCK_MS", _int)
    xread_count: int = _env("XREAD_COUNT", _int)
    xread_max_connections: int = _env("XREAD_MAX_CONNECTIONS", _int)

    # Workers.
    worker_block_ms: int = _env("WORKER_BLOCK_MS", _int)
    job_visibility_s: float = _env("JOB_VISIBILITY_S", _float)
    job_max_attempts: int = _env("JOB_MAX_ATTEMPTS", _int)
    max_events_per_job: int = _env("MAX_EVENTS_PER_JOB", _int)
    # Bytes, not only counts: the largest event frame, and the most a job may store.
    max_event_bytes: int = _env("MAX_EVENT_BYTES", _int)
    max_job_bytes: int = _env("MAX_JOB_BYTES", _int)
    job_timeout_s: float = _env("JOB_TIMEOUT_S", _float)
    maintenance_interval_s: float = _env("MAINTENANCE_INTERVAL_S", _float)
    maintenance_lease_s: float = _env("MAINTENANCE_LEASE_S", _float)
    worker_stop_grace_s: float = _env("WORKER_STOP_GRACE_S", _float)
    worker_metrics_port: int = _env("WORKER_METRICS_PORT", _int)
    # A worker whose events cannot be written for this long stops taking new jobs.
    worker_pause_after_s: float = _env("WORKER_PAUSE_AFTER_S", _float)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = dict(DEFAULTS)
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or (raw.strip() == "" and f.name != "api_keys"):
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as e:
                shown = "<hidden>" if not f.repr else repr(raw)
                raise ConfigError(f"{name}: expected {_expected(f.type, e)}, got {shown}") from e
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Reject values that parse but make no sense together."""
        positive = (
            "idle_timeout_s",
            "sse_keepalive_s",
            "result_ttl_s",
            "max_body_bytes",
            "max_frame_bytes",
            "max_watches_per_socket",
            "max_send_queue_bytes",
            "send_stall_timeout_s",
            "max_sockets",
            "catch_up_page_size",
            "max_replay_events",
            "xread_block_ms",
            "xread_count",
            "xread_max_connections",
            "worker_block_ms",
            "job_visibility_s",
            "job_max_attempts",
            "max_events_per_job",
            "job_streams",
            "max_event_bytes",
            "max_job_bytes",
            "job_timeout_s",
            "request_header_timeout_s",
            "request_body_timeout_s",
            "redis_socket_timeout_s",
            "redis_connect_timeout_s",
            "redis_max_connections",
            "probe_after_s",
            "probe_timeout_s",
            "maintenance_lease_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                env = next(f.metadata["env"] for f in fields(self) if f.name == name)
                raise ConfigError(f"{env}: expected a positive number, got {getattr(self, name)}")
        if self.socket_send_buffer_bytes < 0:
            raise ConfigError(
                "SOCKET_SEND_BUFFER_BYTES: expected 0 (the kernel's default) or a positive "
                f"number, got {self.socket_send_buffer_bytes}"
            )
        if self.max_job_bytes < self.max_event_bytes:
            raise ConfigError(
                f"MAX_JOB_BYTES ({self.max_job_bytes}) must be at least MAX_EVENT_BYTES "
                f"({self.max_event_bytes})"
            )
        if not self.key_prefix or any(c in self.key_prefix for c in "{}*?[] "):
            raise ConfigError(
                f"KEY_PREFIX: expected a plain name without braces, globs or spaces, "
                f"got {self.key_prefix!r}"
            )

    def require_secret_key(self) -> None:
        """Processes that sign or check tokens call this before they start."""
        if not self.secret_key:
            raise ConfigError(
                "SECRET_KEY: required; it signs watch tokens and every gateway of a "
                "deployment needs the same one (python -m service dev makes one for you)"
            )

    @property
    def token_keys(self) -> tuple[str, ...]:
        """Keys that verify tokens, the signing key first."""
        return (self.secret_key, *self.secret_key_fallbacks)


def _expected(annotation: Any, error: ValueError) -> str:
    hint = str(error)
    if hint.startswith(("one of", "a URL", "true or false", "a list of")):
        return hint
    names = {"int": "an integer", "float": "a number"}
    return names.get(str(annotation), "a valid value")


DEFAULTS: dict[str, Any] = {
    "redis_url": "redis://127.0.0.1:6379/0",
    "delivery_mode": "pubsub",
    "redis_cluster": False,
    "redis_cluster_nodes": (),
    "job_streams": 1,
    "secret_key": "",
    "secret_key_fallbacks": (),
    "api_keys": (),
    "admin_key": "",
    "idle_timeout_s": 300.0,
    "sse_keepalive_s": 15.0,
    "result_ttl_s": 86400,
    "key_prefix": "rc",
    "log_level": "INFO",
    "log_format": "text",
    "redis_socket_timeout_s": 5.0,
    "redis_connect_timeout_s": 5.0,
    "redis_max_connections": 16,
    "max_body_bytes": 1 * MiB,
    "max_frame_bytes": 1 * MiB,
    "max_bad_frames_per_min": 60,
    "max_watches_per_socket": 100,
    "max_send_queue_bytes": 4 * MiB,
    "send_stall_timeout_s": 10.0,
    "socket_send_buffer_bytes": 256 * 1024,
    "max_sockets": 19_000,
    "websocket_send": "fast",
    "allowed_origins": (),
    "catch_up_page_size": 500,
    "max_replay_events": 100_000,
    "shutdown_grace_s": 5.0,
    "request_header_timeout_s": 10.0,
    "request_body_timeout_s": 30.0,
    "probe_after_s": 60.0,
    "probe_timeout_s": 5.0,
    "xread_block_ms": 15_000,
    "xread_count": 20,
    "xread_max_connections": 10_000,
    "worker_block_ms": 5_000,
    "job_visibility_s": 30.0,
    "job_max_attempts": 3,
    "max_events_per_job": 1_000_000,
    "max_event_bytes": 1 * MiB,
    "max_job_bytes": 64 * MiB,
    "job_timeout_s": 600.0,
    "maintenance_interval_s": 60.0,
    "maintenance_lease_s": 15.0,
    "worker_stop_grace_s": 10.0,
    "worker_metrics_port": 0,
    "worker_pause_after_s": 15.0,
}
