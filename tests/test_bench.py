"""`python -m service bench` runs end to end (tiny workload) and reports exact delivery."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from service.config import DELIVERY_MODES
from tests.conftest import PYTHON, ROOT, service_env


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_compares_both_modes(tmp_path: Path) -> None:
    env = service_env("redis://unused")
    del env["REDIS_URL"]  # the bench starts its own private Redis
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "service",
            "bench",
            "--out",
            str(tmp_path),
            "--idle-sockets",
            "20",
            "--idle-seconds",
            "2",
            "--burst-jobs",
            "5",
            "--burst-events",
            "20",
            "--steady-sockets",
            "10",
            "--steady-rate",
            "20",
            "--steady-seconds",
            "2",
            "--xread-block-ms",
            "500",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "idle: Redis commands per socket-hour" in result.stdout
    assert "xread/pubsub" in result.stdout
    report = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    by_mode = {r["mode"]: r for r in report["results"]}
    assert set(by_mode) == set(DELIVERY_MODES)
    for figures in by_mode.values():
        for phase in ("burst", "steady"):
            assert (
                figures[phase]["lost"],
                figures[phase]["duplicated"],
                figures[phase]["out_of_order"],
            ) == (0, 0, 0)
        assert figures["burst"]["delivered"] == 5 * 21
    assert by_mode["pubsub"]["idle"]["redis_commands"] == 0
    # 20 sockets each blocking 500 ms for 2 s: about 80 XREADs.
    assert by_mode["xread"]["idle"]["redis_commands"] >= 40
    assert by_mode["xread"]["idle"]["redis_connections"] >= 20
    assert by_mode["pubsub"]["idle"]["redis_connections"] <= 3
    assert list(tmp_path.glob("bench-*.png"))


def test_the_running_service_loads_no_benchmark_code() -> None:
    """The bench harness, the benchmark scripts and their libraries stay out of what a
    gateway, a worker, a producer or `migrate` import."""
    program = (
        "import sys, service.gateway.server, service.worker, service.producer, "
        "service.migrate_cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('service.bench') or "
        "m.split('.')[0] in ('benchmarks', 'matplotlib', 'broadcaster', 'socketio')))"
    )
    done = subprocess.run(
        [PYTHON, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
