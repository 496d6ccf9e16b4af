"""The benchmark scripts themselves, run small: they must keep working and report honestly.

Their figures are not asserted (speed is measured, never tested); what is asserted is that
each runs to the end against its own private Redis and reports nothing lost.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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
        "--latency-sockets", "20", "--latency-seconds", "1",
        "--rr-sockets", "20", "--rr-rounds", "20",
        "--idle-sockets", "20", "--idle-seconds", "1",
    )  # fmt: skip
    lines = {line.split(" ", 1)[0]: line for line in out.splitlines()}
    assert {"throughput", "latency", "roundrobin", "idle", "catchup"} <= set(lines), out
    for phase in ("throughput", "latency", "roundrobin", "catchup"):
        assert "'exact': True" in lines[phase], out


@pytest.mark.timeout(180)
def test_the_emit_script_runs() -> None:
    out = run("benchmarks.emit_throughput", "--n", "2000", "--runs", "1")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["1"]]
    assert len(rows) == 1 and rows[0][-1] == "yes", out  # every event stored once, in order


@pytest.mark.timeout(180)
def test_the_slow_reader_script_reports_every_event_once(tmp_path: Path) -> None:
    figures = tmp_path / "slow.json"
    run(
        "benchmarks.slow_readers",
        "--rate-mb", "2", "--rate-mbps", "2", "--tenth-events", "300", "--crowd", "20",
        "--json", str(figures), "--plot", str(tmp_path / "rss.png"),
    )  # fmt: skip
    found = json.loads(figures.read_text())
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
