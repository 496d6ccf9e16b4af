"""The README's tour runs as written, and every link in the README and docs/ leads somewhere."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, service_env
from tests.processes import running_stack

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Where the tour's commands expect the dev stack; the test points them at its own.
TOUR_BASE = "http://localhost:8000"


def section(markdown: str, heading: str) -> str:
    """The text under `## heading`, up to the next heading of that level."""
    start = markdown.index(f"\n## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else None]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_readmes_tour_runs_as_written(tmp_path: Path) -> None:
    tour = section((ROOT / "README.md").read_text(), "A five-minute tour")
    blocks = re.findall(r"```bash\n(.*?)```", tour, re.DOTALL)
    assert len(blocks) == 4, blocks  # submit, watch, the SSE stream, the stored events
    # Each block's output is told apart by a marker line between them.
    script = "\n".join(f"{block}echo '--- end of block {n}'" for n, block in enumerate(blocks))
    async with running_stack(tmp_path) as base:
        script = script.replace(TOUR_BASE, base)
        env = service_env("redis://unused") | {
            # `python` and `python3` are the virtualenv's, as after `. .venv/bin/activate`.
            "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}",
            "RESULTCAST_URL": base,
        }
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = re.split(r"--- end of block \d\n", done.stdout)
    submitted, watched, streamed, stored = outputs[:4]
    assert re.fullmatch(r"job [\w-]{22}\n", submitted), submitted
    job = submitted.split()[1]
    events = [json.loads(line) for line in watched.splitlines()]
    assert [(e["job"], e["seq"]) for e in events] == [(job, n) for n in range(1, 7)], watched
    assert events[-1]["event"] == "done"
    assert re.findall(r"^id: (\S+)$", streamed, re.MULTILINE) == [f"{n}-0" for n in range(1, 7)]
    assert "event: done" in streamed
    body = json.loads(stored)
    assert body["status"] == "done" and [e["seq"] for e in body["events"]] == list(range(1, 7))


def test_every_relative_link_in_the_readme_and_docs_leads_to_a_file() -> None:
    broken = []
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not (document.parent / path).exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert broken == []


def test_every_anchor_a_document_links_to_is_a_heading_there() -> None:
    def anchors(document: Path) -> set[str]:
        headings = re.findall(r"^#+ (.+)$", document.read_text(), re.MULTILINE)
        return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}

    missing = []
    for document in DOCUMENTS:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", document.read_text()):
            linked = (document.parent / target) if target else document
            if linked.suffix == ".md" and anchor not in anchors(linked):
                missing.append(f"{document.relative_to(ROOT)}: {target}#{anchor}")
    assert missing == []
