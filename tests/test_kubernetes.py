"""deploy/kubernetes: every overlay renders, validates against the Kubernetes schemas, and
holds to the contract (documented settings only, the ports and probe paths the gateway
serves, grace periods that fit SHUTDOWN_GRACE_S and WORKER_STOP_GRACE_S, locked-down
containers, no Secret in the repository)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from service.config import DEFAULTS, Settings
from tests.conftest import ROOT
from tests.processes import running_gateway

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
# The oldest release the manifests need (the preStop `sleep` action is 1.30) and the newest
# whose schemas kubernetes-validate ships.
RELEASES = ("1.30.0", kubernetes_validate.latest_version())
DOCUMENTED = {f.metadata["env"] for f in dataclasses.fields(Settings)}


def render(directory: Path) -> list[dict[str, Any]]:
    """The overlay as kubectl renders it: skipped without kubectl on a developer's machine,
    failed in CI (its machines have it)."""
    if shutil.which("kubectl") is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: CI machines have it (it renders the overlays)")
        pytest.skip("kubectl is not installed (it renders the overlays)")
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def settings_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    return dict(config["data"])


def containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every workload."""
    found = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            pod = doc["spec"]["template"]["spec"]
            found += [(pod, c) for c in pod["containers"]]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("release", RELEASES)
def test_every_overlay_renders_and_validates(overlay: str, release: str) -> None:
    for doc in render(KUBERNETES / "overlays" / overlay):
        kubernetes_validate.validate(doc, release, strict=True)


def test_the_optional_components_render(tmp_path: Path) -> None:
    """The ServiceMonitor and HTTPRoute components (custom resources: rendered, not
    validated against the core schemas)."""
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    both = tree / "overlays" / "both"
    both.mkdir()
    (both / "kustomization.yaml").write_text(
        "resources: [../dev]\n"
        "components: [../../components/servicemonitor, ../../components/httproute]\n"
    )
    kinds = [doc["kind"] for doc in render(both)]
    assert kinds.count("ServiceMonitor") == 2 and kinds.count("HTTPRoute") == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_documented_settings_and_no_secret_in_the_repository(overlay: str) -> None:
    docs = render(KUBERNETES / "overlays" / overlay)
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created by hand"
    named = set(settings_of(docs))
    for _, container in containers(docs):
        named |= {e["name"] for e in container.get("env", [])}
    named.discard("REDIS_ARGS")
    assert named <= DOCUMENTED, named - DOCUMENTED
    for _, container in containers(docs):
        for entry in container.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:  # secrets come from the documented Secrets
                assert ref["name"] in ("resultcast-secrets", "resultcast-redis"), ref


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_periods_fit_the_shutdown_settings(overlay: str) -> None:
    docs = render(KUBERNETES / "overlays" / overlay)
    config = settings_of(docs)
    gateway = of_kind(docs, "Deployment", "resultcast-gateway")["spec"]["template"]["spec"]
    [container] = gateway["containers"]
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace_s = float(config.get("SHUTDOWN_GRACE_S", DEFAULTS["shutdown_grace_s"]))
    # Routing stops, then every client gets 1001 within the grace, before any SIGKILL.
    assert gateway["terminationGracePeriodSeconds"] >= pre_stop_s + grace_s + 5
    worker = of_kind(docs, "Deployment", "resultcast-worker")["spec"]["template"]["spec"]
    stop_s = float(config.get("WORKER_STOP_GRACE_S", DEFAULTS["worker_stop_grace_s"]))
    assert worker["terminationGracePeriodSeconds"] >= stop_s + 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(overlay: str) -> None:
    for pod, container in containers(render(KUBERNETES / "overlays" / overlay)):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]


async def test_ports_and_probe_paths_are_the_ones_the_gateway_serves(
    settings: Settings, migrated: Any
) -> None:
    docs = render(KUBERNETES / "overlays" / "dev")
    gateway = of_kind(docs, "Deployment", "resultcast-gateway")["spec"]["template"]
    [container] = gateway["spec"]["containers"]
    args = container["args"]
    port = int(args[args.index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    assert gateway["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    service = of_kind(docs, "Service", "resultcast-gateway")
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    paths = [
        container["readinessProbe"]["httpGet"]["path"],
        container["livenessProbe"]["httpGet"]["path"],
        gateway["metadata"]["annotations"]["prometheus.io/path"],
    ]
    async with running_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
        for path in paths:
            assert (await http.get(path)).status_code == 200, path
    worker = of_kind(docs, "Deployment", "resultcast-worker")["spec"]["template"]
    [worker_container] = worker["spec"]["containers"]
    metrics_port = int(settings_of(docs)["WORKER_METRICS_PORT"])
    assert worker_container["ports"][0]["containerPort"] == metrics_port
    assert worker["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    assert worker_container["livenessProbe"]["httpGet"]["path"] == "/metrics"
