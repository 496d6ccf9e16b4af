"""What a new user meets first: a clear line when Redis cannot be reached, `--help` that
names the environment, and a README snippet that runs as written."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from service.processes import SERVICE
from tests.conftest import PYTHON, ROOT, service_env
from tests.processes import running_stack
from tests.redis_servers import free_port


@pytest.mark.parametrize("command", ["gateway", "worker", "migrate"])
def test_an_unreachable_redis_is_one_clear_line_and_a_failed_exit(command: str) -> None:
    url = f"redis://app:s3cret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    done = subprocess.run(
        [*SERVICE, command],
        cwd=ROOT,
        env=service_env(url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{command}: cannot reach Redis at redis://app:***@127.0.0.1:"), last
    assert "REDIS_URL" in last and "Connect" in last, last
    assert "s3cret-pw" not in done.stderr


@pytest.mark.parametrize("command", ["gateway", "worker"])
def test_help_shows_the_environment_that_matters(command: str) -> None:
    done = subprocess.run(
        [*SERVICE, command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "REDIS_URL" in done.stdout and "docs/configuration.md" in done.stdout
    reference = (ROOT / "docs" / "configuration.md").read_text()
    section = done.stdout.split("environment", 1)[1]
    leading = re.findall(r"^ +([A-Z][A-Z_]+(?:, [A-Z][A-Z_]+)*)", section, re.MULTILINE)
    named = [name for names in leading for name in names.split(", ")]
    missing = [name for name in named if f"`{name}`" not in reference]
    assert named and missing == [], missing  # every variable --help names is documented


@pytest.mark.slow
async def test_the_readmes_python_client_snippet_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    (snippet,) = [b for b in blocks if "from service.client import submit, watch" in b]
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    async with running_stack(tmp_path) as base:
        env = service_env("redis://unused") | {"RESULTCAST_URL": base}
        done = await asyncio.to_thread(
            subprocess.run,
            [PYTHON, str(script)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["1", "2", "3", "4", "5", "6"], lines
