"""The chaos run, seeded and short: faults at random and overlapping over the whole stack
(two gateways behind a cutting proxy, two workers, a producer process, Redis), with every
client's record checked afterwards. Only exactness is asserted: every job ended, every event
once and in order, no `gone`, no ERROR line that the faults do not explain."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, service_env

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(450)
@pytest.mark.parametrize(
    ("seed", "redis"),
    [(7, "one server"), (11, "cluster")],
)
def test_a_seeded_chaos_run_loses_and_repeats_nothing(
    tmp_path: Path, seed: int, redis: str
) -> None:
    figures = tmp_path / "chaos.json"
    args = ["--seed", str(seed), "--duration-s", "60", "--clients", "150"]
    args += ["--fault-every-s", "4", "--drain-s", "90", "--settle-s", "5"]
    args += ["--out", str(tmp_path / "run")]
    if redis == "cluster":
        args.append("--cluster")
    done = subprocess.run(
        [PYTHON, "-m", "benchmarks.chaos", *args, "--json", str(figures)],
        check=False,
        cwd=ROOT,
        env=service_env("redis://127.0.0.1:1/0"),  # it starts its own Redis
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(figures.read_text())
    assert sum(result["faults"].values()) >= 8, result["faults"]
    assert result["jobs"] >= 150 and result["events_checked"] > 0
    exactness = {k: result[k] for k in ("jobs_not_ended", "lost", "duplicated", "out_of_order")}
    assert exactness == {"jobs_not_ended": 0, "lost": 0, "duplicated": 0, "out_of_order": 0}
    assert result["exact_jobs"] == result["jobs"]
    assert result["gone"] == 0
    assert result["errors_unexplained"] == {}, result["errors_unexplained"]
