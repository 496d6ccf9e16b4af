"""The benchmark scripts themselves, run small: they must keep working and report honestly.

Their figures are not asserted (speed is measured, never tested); what is asserted is that
each runs to the end against its own private Redis and reports nothing lost.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, ROOT, service_env

pytestmark = pytest.mark.slow


def run(module: str, *args: str) -> str:
    # The scripts start their own private redis-server; the URL here is never used.
    done = subprocess.run(
        [PYTHON, "-m", module, *args],
        check=False,
        cwd=ROOT,
        env=service_env("redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def run_for_json(module: str, tmp_path: Path, *args: str) -> Any:
    """Run `module` with `--json` into `tmp_path`; what it wrote."""
    figures = tmp_path / "figures.json"
    run(module, *args, "--json", str(figures))
    return json.loads(figures.read_text())


@pytest.mark.timeout(180)
def test_the_soak_script_reports_memory_commands_and_recovery() -> None:
    out = run("benchmarks.soak", "--sockets", "20", "--minutes", "0.05", "--sample-s", "1")
    assert "rss MiB" in out and "commands" in out
    assert "exactly once: True" in out, out


@pytest.mark.timeout(180)
def test_the_gateway_load_script_runs_every_phase() -> None:
    out = run(
        "benchmarks.gateway_load",
        "--sockets", "20", "--jobs", "4", "--events", "20",
        "--latency-sockets", "20", "--latency-seconds", "1", "--latency-interval-ms", "200",
        "--rr-sockets", "20", "--rr-rounds", "20", "--connect-sockets", "30",
        "--idle-sockets", "20", "--idle-seconds", "1",
    )  # fmt: skip
    lines = {line.split(" ", 1)[0]: line for line in out.splitlines()}
    assert {"throughput", "latency", "roundrobin", "connect", "idle", "catchup"} <= set(lines)
    assert "'rate_per_s': 100," in lines["latency"], out  # 20 sockets, an event each 200 ms
    for phase in ("throughput", "latency", "roundrobin", "connect", "catchup"):
        assert "'exact': True" in lines[phase], out


@pytest.mark.timeout(180)
def test_the_emit_script_runs() -> None:
    out = run("benchmarks.emit_throughput", "--n", "2000", "--runs", "1")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["1"]]
    assert len(rows) == 1 and rows[0][-1] == "yes", out  # every event stored once, in order


@pytest.mark.timeout(180)
def test_the_slow_reader_script_reports_every_event_once(tmp_path: Path) -> None:
    found = run_for_json(
        "benchmarks.slow_readers",
        tmp_path,
        "--rate-mb", "2", "--rate-mbps", "2", "--tenth-events", "300", "--crowd", "20",
        "--plot", str(tmp_path / "rss.png"),
    )  # fmt: skip
    readers = [
        *(found[name][speed] for name in ("rate", "tenth") for speed in ("slow", "fast")),
        *found["replay"].values(),
        *found["crowd"].values(),
    ]
    assert len(readers) == 8
    for reader in readers:
        assert reader["received"] == reader["expected"] > 0, reader
        assert (reader["lost"], reader["duplicated"], reader["out_of_order"]) == (0, 0, 0)
        assert reader["closes"] == []
    assert (tmp_path / "rss.png").stat().st_size > 0


@pytest.mark.timeout(180)
def test_the_network_drop_script_cuts_connections_and_loses_nothing(tmp_path: Path) -> None:
    found = run_for_json(
        "benchmarks.network_drops",
        tmp_path,
        "--clients", "30", "--events", "12", "--rate", "5", "--cut-every-s", "0.8",
        "--start-in-s", "1", "--plot", str(tmp_path / "drops.png"),
    )  # fmt: skip
    assert found["cuts"] >= 30 and found["resumes"] >= 30, found
    assert found["delivered"] == found["expected"] == 30 * 13, found
    assert (found["duplicates"], found["out_of_order"], found["exact_jobs"]) == (0, 0, 30)
    assert found["resumes_that_missed_events"] > 0, found
    assert (tmp_path / "drops.png").stat().st_size > 0


@pytest.mark.timeout(180)
def test_the_avalanche_script_brings_every_client_back(tmp_path: Path) -> None:
    found = run_for_json(
        "benchmarks.avalanche",
        tmp_path,
        "--sockets", "200", "--per-job", "20", "--job-seconds", "8",
    )  # fmt: skip
    assert found["close_codes"] == {"1001": 200}, found
    assert found["all_back_s"] >= found["first_back_s"] > found["shutdown_s"] > 0, found
    assert (found["lost"], found["duplicates"], found["out_of_order"]) == (0, 0, 0), found
    assert found["exact_watches"] == 200
    assert found["gateway_commands_to_resume"] > 0


@pytest.mark.timeout(240)
def test_the_alternatives_script_runs_every_system_exactly(tmp_path: Path) -> None:
    found = run_for_json(
        "benchmarks.alternatives",
        tmp_path,
        "--rounds", "1", "--sockets", "30,5", "--rr-rounds", "5", "--burst", "3",
        "--idle-s", "1",
    )  # fmt: skip
    (results,) = found["rounds"]
    assert set(results) == {"resultcast", "resultcast-asgi", "broadcaster", "socketio"}
    for name, figures_of in results.items():
        assert figures_of["exact_30"] and figures_of["exact_5"], name
        assert figures_of["rr_30"]["events_per_s"] > 0, name
        assert figures_of["idle"]["redis_commands_per_min"] == 0, name
    assert set(found["ratios"]) == {
        "resultcast/resultcast-asgi",
        "resultcast/broadcaster",
        "resultcast/socketio",
        "resultcast-asgi/broadcaster",
        "resultcast-asgi/socketio",
    }
    ratios = found["ratios"]["resultcast/broadcaster"]
    assert ratios["rr_30.events_per_s"] > 0  # (CPU in clock ticks: too coarse at this size)
