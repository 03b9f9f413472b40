"""Reads rendered Kustomize output: what check_prod.py and manifest_env.py share.

Only the standard library and PyYAML (a dependency of kubernetes-validate).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("PyYAML is missing: pip install pyyaml (deploy/validate.sh installs it)")

DEPLOY_DIR = Path(__file__).resolve().parent
OVERLAYS_DIR = DEPLOY_DIR / "k8s" / "overlays"
SERVICES = ("registry-svc", "pipeline-svc")


class ManifestError(Exception):
    """The manifests cannot be rendered or lack something a caller needs."""


def overlay_dir(overlay: str) -> Path:
    """`prod`, `dev` or a path to a kustomization directory."""
    path = Path(overlay)
    if not path.is_dir():
        path = OVERLAYS_DIR / overlay
    if not (path / "kustomization.yaml").is_file():
        raise ManifestError(f"{overlay!r} is neither an overlay name nor a kustomization directory")
    return path


def render(overlay: str) -> str:
    """`kubectl kustomize` of an overlay (KUBECTL chooses the binary)."""
    kubectl = os.environ.get("KUBECTL", "kubectl")
    cmd = [kubectl, "kustomize", str(overlay_dir(overlay))]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise ManifestError(f"{kubectl} not found (deploy/validate.sh installs it): {e}") from e
    except subprocess.CalledProcessError as e:
        raise ManifestError(f"{' '.join(cmd)} failed:\n{e.stderr}") from e
    return out.stdout


@dataclass
class EnvVar:
    value: str | None
    # "configmap:<name>", "env" or "secret:<name>/<key>"
    source: str

    @property
    def from_secret(self) -> bool:
        return self.source.startswith("secret:")


class Rendered:
    """The objects of one rendered overlay."""

    def __init__(self, text: str):
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    @classmethod
    def load(cls, overlay: str | None = None, rendered: str | None = None) -> "Rendered":
        if rendered is not None:
            return cls(Path(rendered).read_text())
        return cls(render(overlay or "prod"))

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def get(self, kind: str, name: str) -> dict | None:
        for d in self.of_kind(kind):
            if d["metadata"]["name"] == name:
                return d
        return None

    def deployment(self, service: str) -> dict:
        dep = self.get("Deployment", service)
        if dep is None:
            raise ManifestError(f"no Deployment named {service}")
        return dep

    def container(self, service: str) -> dict:
        for c in self.deployment(service)["spec"]["template"]["spec"]["containers"]:
            if c["name"] == service:
                return c
        raise ManifestError(f"Deployment {service} has no container named {service}")

    def env(self, service: str) -> dict[str, EnvVar]:
        """The environment the container gets, in Kubernetes' precedence: envFrom in order,
        then env. Keys from a whole Secret (envFrom secretRef) cannot be known here, so they
        are refused rather than silently missed."""
        container = self.container(service)
        out: dict[str, EnvVar] = {}
        for src in container.get("envFrom", []):
            if "configMapRef" in src:
                name = src["configMapRef"]["name"]
                cm = self.get("ConfigMap", name)
                if cm is None:
                    raise ManifestError(f"{service}: envFrom names ConfigMap {name}, which is not rendered")
                prefix = src.get("prefix", "")
                for k, v in (cm.get("data") or {}).items():
                    out[prefix + k] = EnvVar(str(v), f"configmap:{name}")
            else:
                raise ManifestError(f"{service}: envFrom {src} has keys unknown at render time; use env with secretKeyRef")
        for e in container.get("env", []):
            if "value" in e or "valueFrom" not in e:
                out[e["name"]] = EnvVar(str(e.get("value", "")), "env")
                continue
            ref = e["valueFrom"]
            if "secretKeyRef" in ref:
                s = ref["secretKeyRef"]
                out[e["name"]] = EnvVar(None, f"secret:{s['name']}/{s['key']}")
            elif "configMapKeyRef" in ref:
                c = ref["configMapKeyRef"]
                cm = self.get("ConfigMap", c["name"]) or {}
                out[e["name"]] = EnvVar(str((cm.get("data") or {}).get(c["key"], "")), f"configmap:{c['name']}")
            else:
                raise ManifestError(f"{service}: env {e['name']} uses {list(ref)}, which cannot be reproduced off-cluster")
        return out

    def mount_paths(self, service: str) -> list[str]:
        return [m["mountPath"] for m in self.container(service).get("volumeMounts", [])]

    def service_names(self) -> set[str]:
        return {s["metadata"]["name"] for s in self.of_kind("Service")}


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) matches `labels`."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
