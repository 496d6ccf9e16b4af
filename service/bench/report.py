"""The A/B benchmark's output: a side-by-side table, a JSON file, and a PNG chart."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from service.bench.ab import SEED_OVERNIGHT, ModeResult
from service.bench.params import Params
from service.config import DELIVERY_MODES

ROWS: list[tuple[str, str, str, str]] = [
    # (phase, key, label, format)
    ("idle", "commands_per_socket_hour", "idle: Redis commands per socket-hour", "{:,.1f}"),
    ("idle", "redis_connections", "idle: gateway Redis connections", "{:,.0f}"),
    ("idle", "rss_kib_per_socket", "idle: gateway RSS per socket (KiB)", "{:,.1f}"),
    ("idle", "gateway_rss_mib", "idle: gateway RSS (MiB)", "{:,.1f}"),
    ("idle", "cpu_s_per_socket_hour", "idle: gateway CPU s per socket-hour", "{:,.3f}"),
    ("overnight", "commands_one_tab_8h", "overnight: commands, 1 tab, 8 h", "{:,.0f}"),
    ("burst", "events_per_s", "burst: delivered events/s", "{:,.0f}"),
    ("burst", "p50_ms", "burst: latency p50 (ms)", "{:,.2f}"),
    ("burst", "p95_ms", "burst: latency p95 (ms)", "{:,.2f}"),
    ("burst", "p99_ms", "burst: latency p99 (ms)", "{:,.2f}"),
    ("burst", "max_ms", "burst: latency max (ms)", "{:,.2f}"),
    ("burst", "lost", "burst: lost events", "{:,.0f}"),
    ("burst", "duplicated", "burst: duplicated events", "{:,.0f}"),
    ("burst", "out_of_order", "burst: out-of-order events", "{:,.0f}"),
    ("burst", "gateway_cpu_us_per_event", "burst: gateway CPU us per event", "{:,.1f}"),
    ("burst", "redis_cpu_us_per_event", "burst: Redis CPU us per event", "{:,.1f}"),
    ("burst", "replica_cpu_us_per_event", "burst: replicas' CPU us per event", "{:,.1f}"),
    ("burst", "redis_bytes_in_per_event", "burst: gateway bytes in per event", "{:,.0f}"),
    ("steady", "p50_ms", "steady: latency p50 (ms)", "{:,.2f}"),
    ("steady", "p95_ms", "steady: latency p95 (ms)", "{:,.2f}"),
    ("steady", "p99_ms", "steady: latency p99 (ms)", "{:,.2f}"),
    ("steady", "max_ms", "steady: latency max (ms)", "{:,.2f}"),
    ("steady", "lost", "steady: lost events", "{:,.0f}"),
]


def _value(result: ModeResult, phase: str, key: str) -> float | None:
    figures: dict[str, Any] = getattr(result, phase)
    value = figures.get(key)
    return None if value is None else float(value)


def ratio(a: float | None, b: float | None) -> str:
    """xread / pubsub, the factor Pub/Sub saves (or, for throughput, gives up)."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "-"
    if a == 0 and b == 0:
        return "="
    if a == 0:
        return "∞" if b > 0 else "-"
    return f"{b / a:,.1f}x"


def table(results: list[ModeResult]) -> str:
    by_mode = {r.mode: r for r in results}
    modes = [m for m in DELIVERY_MODES if m in by_mode]
    header = f"{'figure':<40}" + "".join(f"{m:>14}" for m in modes)
    if len(modes) == 2:
        header += f"{'xread/pubsub':>14}"
    lines = [header, "-" * len(header)]
    for phase, key, label, fmt in ROWS:
        values = [_value(by_mode[m], phase, key) for m in modes]
        if all(v is None for v in values):
            continue
        cells = "".join(f"{'-' if v is None else fmt.format(v):>14}" for v in values)
        extra = f"{ratio(values[0], values[1]):>14}" if len(modes) == 2 else ""
        lines.append(f"{label:<40}{cells}{extra}")
    lines.append("")
    lines.append(
        "seed write-up, one tab overnight: "
        + ", ".join(f"{name} ~{count:,}" for name, count in SEED_OVERNIGHT.items())
    )
    return "\n".join(lines)


def shards_table(results: list[ModeResult]) -> str:
    """Each primary's share of the burst's messages and of the keys: the balance of a cluster."""
    lines = [f"\n{'burst, per primary':<24}{'messages':>10}{'share':>8}{'keys':>8}{'share':>8}"]
    for result in results:
        shards = result.burst.get("shards")
        if not isinstance(shards, list):
            continue
        lines.append(f"{result.mode}:")
        for shard in shards:
            lines.append(
                f"  {shard['primary']:<22}{shard['messages']:>10,}{shard['messages_share']:>8.0%}"
                f"{shard['keys']:>8,}{shard['keys_share']:>8.0%}"
            )
    return "\n".join(lines)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("resultcast", "redis", "hiredis", "uvicorn", "starlette", "websockets"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_json(
    path: Path, params: Params, results: list[ModeResult], extra: dict[str, Any]
) -> None:
    path.write_text(
        json.dumps(
            {
                "params": asdict(params),
                **extra,
                "versions": versions(),
                "results": [r.figures() for r in results],
            },
            indent=2,
        )
    )


def write_chart(path: Path, results: list[ModeResult]) -> str | None:
    """Latency distribution and idle command cost per mode; None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'resultcast[bench]'): no chart"
    figure, (latency, idle) = plt.subplots(1, 2, figsize=(12, 4.5))
    for result in results:
        for name, values in (
            ("burst", result.burst_latencies_ns),
            ("steady", result.steady_latencies_ns),
        ):
            if not values:
                continue
            ordered = sorted(v / 1e6 for v in values)
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            latency.plot(ordered, fractions, label=f"{result.mode} {name}")
    latency.set_xscale("log")
    latency.set_xlabel("emit to receipt latency (ms, log)")
    latency.set_ylabel("fraction of events")
    latency.set_title("Latency distribution")
    latency.grid(True, which="both", alpha=0.3)
    if latency.get_lines():
        latency.legend()
    modes = [r.mode for r in results]
    costs = [r.idle.get("commands_per_socket_hour", 0.0) for r in results]
    bars = idle.bar(modes, [max(c, 0.01) for c in costs], color=["#2a7", "#c54"][: len(modes)])
    idle.set_yscale("log")
    idle.set_ylabel("Redis commands per socket-hour (log)")
    idle.set_title("Idle cost")
    for bar, cost in zip(bars, costs, strict=True):
        idle.annotate(
            f"{cost:,.1f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
        )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
