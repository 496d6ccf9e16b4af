"""deploy/observability against the real thing: the alert rules pass `promtool check` and
their unit tests (each alert fires on one series and not on another), and a real Prometheus
scraping a real gateway and worker under a short load evaluates every dashboard query and
every alert expression: each parses and returns data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
import yaml

from service.config import Settings
from service.processes import free_port, spawn, stop
from tests.conftest import ROOT, wait_for
from tests.processes import running_gateway, service_process
from tests.ws_client import connect, submit

OBSERVABILITY = ROOT / "deploy" / "observability"
ALERTS = OBSERVABILITY / "alerts.yaml"
COMPARISON = re.compile(r"\s(==|!=|>=|<=|>|<)\s+([0-9.eE+-]+)\s*$")

pytestmark = pytest.mark.slow


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run installs Debian's prometheus")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path


def test_the_alert_rules_check_and_pass_their_unit_tests() -> None:
    promtool = tool("promtool")
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", "alerts_test.yaml"]):
        done = subprocess.run(
            [promtool, *args], cwd=OBSERVABILITY, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    tested = (OBSERVABILITY / "alerts_test.yaml").read_text()
    for name in alert_names():
        assert f"alertname: {name}" in tested, f"{name} has no promtool test case"


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alert_rules()]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def queries() -> dict[str, str]:
    """Every dashboard target, and every alert expression with its threshold comparison made
    a `bool` one (so that it returns its measure whether or not the alert would fire)."""
    found = {}
    dashboard = json.loads((OBSERVABILITY / "dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for rule in alert_rules():
        expr = " ".join(rule["expr"].split())
        assert COMPARISON.search(expr), f"{rule['alert']}: not `<measure> <op> <threshold>`"
        found[f"alert {rule['alert']}"] = COMPARISON.sub(r" \1 bool \2", expr)
    return found


async def test_every_dashboard_query_and_alert_expression_returns_data(
    settings: Settings, migrated: redis.Redis
) -> None:
    prometheus = tool("prometheus")
    worker_port, prometheus_port = free_port(), free_port()
    env = {"WORKER_METRICS_PORT": str(worker_port), "MAINTENANCE_INTERVAL_S": "1"}
    with (
        service_process(settings.redis_url, "worker", **env),
        tempfile.TemporaryDirectory(prefix="resultcast-prometheus-") as tmp,
    ):
        async with running_gateway(settings) as base:
            gateway_port = int(base.rsplit(":", 1)[1])
            config = Path(tmp) / "prometheus.yml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                        "rule_files": [str(ALERTS)],
                        "scrape_configs": [
                            _job("resultcast-gateway", gateway_port),
                            _job("resultcast-worker", worker_port),
                        ],
                    }
                )
            )
            server = spawn(
                [
                    prometheus,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp}/data",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                die_with_parent=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                api = f"http://127.0.0.1:{prometheus_port}/api/v1/query"
                async with httpx.AsyncClient(timeout=10) as http:
                    await _load(base)
                    await wait_for(
                        lambda: _scraped(http, api), timeout_s=60, what="Prometheus to scrape"
                    )
                    empty = {}
                    for name, query in queries().items():
                        reply = (await http.get(api, params={"query": query})).json()
                        assert reply["status"] == "success", (name, query, reply)
                        if not reply["data"]["result"]:
                            empty[name] = query
                    assert not empty, empty
            finally:
                stop(server)


def _job(name: str, port: int) -> dict[str, Any]:
    return {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}


async def _load(base: str) -> None:
    """Delivered events (latency samples), a failed job, and one left running (pending)."""
    jobs = [await submit(base, "count", {"n": 30, "interval_ms": 20}) for _ in range(10)]
    await submit(base, "fail", {"message": "on purpose"})
    await submit(base, "sleep", {"seconds": 60})
    async with connect(base) as ws:
        got = await (await ws.watch_all(jobs, timeout_s=60))
    assert all(frames[-1].get("event") == "done" for frames in got.values())


async def _scraped(http: httpx.AsyncClient, api: str) -> bool:
    """Both targets up for a few scrapes, and the maintenance sample of the queue taken."""
    checks = {
        'min(count_over_time(up{job=~"resultcast-.*"}[1m]))': 5,
        'count(up{job=~"resultcast-.*"} == 1)': 2,
        "count(resultcast_oldest_pending_age_seconds)": 1,
    }
    for query, least in checks.items():
        result = (await http.get(api, params={"query": query})).json()["data"]["result"]
        if not result or float(result[0]["value"][1]) < least:
            return False
    return True
