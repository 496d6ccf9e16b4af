"""Convert a rendered overlay into what `podman kube play` (podman 4.3) can run, for CI.

    kubectl kustomize deploy/kubernetes/overlays/dev \
        | python deploy/kubernetes/podman_play.py OUT_DIR --image redis:7=localhost/redis:7

podman runs Deployments, Pods, ConfigMaps and PersistentVolumeClaims, but not Jobs,
StatefulSets, Services or readable Secrets (docs/kubernetes.md, "What is tested"). So, one
file per workload, each with the ConfigMaps it reads:

- a StatefulSet becomes a Deployment of one, and each of its volume claim templates a
  PersistentVolumeClaim (writable by the pod's user, through podman's volume annotations);
- a Job becomes a Pod that is not restarted (`podman wait` gives its exit code);
- Services become network aliases (given on the `podman kube play` command line: the
  workload's Service name resolves to every replica); ports are dropped (podman would publish
  each on the host, and a second replica would collide);
- probes and `preStop` are dropped (podman ignores or cannot run them), as are the Ingress,
  the HPA, the PodDisruptionBudget and the NetworkPolicy;
- images are renamed where asked (a machine without a registry has local ones).

Secrets are created with `podman secret create` by the caller. Prints one line per file:
`<file> <alias or ->`, in the order to play them.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

DROPPED = {"Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
ORDER = {"StatefulSet": 0, "Job": 1, "Deployment": 2}


def pod_spec_for_podman(spec: dict[str, Any], images: dict[str, str]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for key in ("ports", "readinessProbe", "livenessProbe", "startupProbe", "lifecycle"):
            container.pop(key, None)
        container["image"] = images.get(container["image"], container["image"])
    spec.pop("terminationGracePeriodSeconds", None)
    return spec


def claims_of(statefulset: dict[str, Any]) -> list[dict[str, Any]]:
    """A PersistentVolumeClaim per template, owned by the pod's user."""
    security = statefulset["spec"]["template"]["spec"].get("securityContext", {})
    claims = []
    for template in statefulset["spec"].get("volumeClaimTemplates", []):
        name = f"{template['metadata']['name']}-{statefulset['metadata']['name']}"
        annotations = {}
        if "runAsUser" in security:
            uid = security["runAsUser"]
            annotations["volume.podman.io/uid"] = str(uid)
            annotations["volume.podman.io/gid"] = str(security.get("fsGroup", uid))
        claims.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "annotations": annotations},
                "spec": template["spec"],
            }
        )
    return claims


def convert(docs: list[dict[str, Any]], images: dict[str, str]) -> list[tuple[str, list[Any], str]]:
    """(file name, documents, network alias) per workload, in the order to play them."""
    config = [d for d in docs if d["kind"] == "ConfigMap"]
    services = {
        tuple(sorted(d["spec"]["selector"].items())): d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Service"
    }
    plays = []
    for doc in sorted(docs, key=lambda d: ORDER.get(d["kind"], 9)):
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in DROPPED or kind == "ConfigMap":
            continue
        if kind == "Secret":
            raise SystemExit(f"a Secret ({name}) is in the manifests: secrets are made by hand")
        template = doc["spec"]["template"]
        spec = pod_spec_for_podman(template["spec"], images)
        labels = template["metadata"].get("labels", {})
        selected = [svc for sel, svc in services.items() if set(sel) <= set(labels.items())]
        alias = selected[0] if selected else "-"
        if kind == "Job":
            spec["restartPolicy"] = "Never"
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}}
            plays.append((f"{name}.yaml", [*config, {**pod, "spec": spec}], alias))
            continue
        if kind not in ("Deployment", "StatefulSet"):
            raise SystemExit(f"{kind} {name}: not converted for podman")
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": doc["metadata"].get("labels", {})},
            "spec": {
                "replicas": doc["spec"].get("replicas", 1) if kind == "Deployment" else 1,
                "selector": doc["spec"]["selector"],
                "template": {"metadata": {"labels": labels}, "spec": spec},
            },
        }
        claims = claims_of(doc) if kind == "StatefulSet" else []
        if claims:
            templates = doc["spec"]["volumeClaimTemplates"]
            spec.setdefault("volumes", []).extend(
                {
                    "name": t["metadata"]["name"],
                    "persistentVolumeClaim": {"claimName": c["metadata"]["name"]},
                }
                for t, c in zip(templates, claims, strict=True)
            )
        plays.append((f"{name}.yaml", [*claims, *config, deployment], alias))
    return plays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--image", action="append", default=[], metavar="FROM=TO")
    args = parser.parse_args()
    images = dict(item.split("=", 1) for item in args.image)
    docs = [doc for doc in yaml.safe_load_all(sys.stdin) if doc]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, documents, alias in convert(docs, images):
        (args.out / name).write_text(yaml.safe_dump_all(documents, sort_keys=False))
        print(name, alias)


if __name__ == "__main__":
    main()
