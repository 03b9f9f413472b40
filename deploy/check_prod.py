#!/usr/bin/env python3
"""Asserts the production guard rails on the rendered `prod` overlay.

    check_prod.py [--overlay prod | --rendered FILE] [--self-test]

For each service: at least two replicas; native gRPC startup, readiness and liveness
probes on the gRPC port (readiness on the service's own health name, which turns SERVING
only with the store); CPU and memory requests and limits; a restricted security context
(non-root, read-only root filesystem, no privilege escalation, all capabilities dropped,
RuntimeDefault seccomp) with writable volumes for the data dir and /tmp; a ServiceAccount;
terminationGracePeriodSeconds above preStop sleep + CAPSTAN_SHUTDOWN_DEADLINE_SECONDS;
database URL and JWT key from Secrets; JSON logs and a maximum connection age; a
PodDisruptionBudget that still allows a drain; a HorizontalPodAutoscaler keeping two
replicas. Then the network: registry-svc's gRPC port admits only pipeline-svc pods,
pipeline-svc's only named namespaces, and pipeline-svc reaches the registry through the
headless Service. Last, identity: pipeline-svc's registry token is a projected
service-account token (renewed by the kubelet, no static token) for the audience the
registry requires, and the registry trusts an OpenID issuer.

--self-test breaks a copy of the rendered objects in each of those ways and fails unless
every break is reported, so the checks themselves are shown able to fail.
Exit status: 0 all checks pass, 1 some failed, 2 the manifests cannot be read.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Callable
from urllib.parse import urlsplit

from manifests import SERVICES, ManifestError, Rendered, selects

GRPC_PORT = {"registry-svc": 50051, "pipeline-svc": 50052}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def check(rendered: Rendered) -> list[str]:
    """Every problem found; empty when the overlay is production-ready."""
    problems: list[str] = []
    for service in SERVICES:
        try:
            problems += check_service(rendered, service)
        except ManifestError as e:
            problems.append(str(e))
    problems += check_network(rendered)
    problems += check_identity(rendered)
    return problems


def check_service(r: Rendered, service: str) -> list[str]:
    p: list[str] = []
    dep = r.deployment(service)
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels") or {}
    c = r.container(service)
    env = r.env(service)
    port = GRPC_PORT[service]

    if (dep["spec"].get("replicas") or 1) < 2:
        p.append(f"{service}: replicas {dep['spec'].get('replicas', 1)} < 2")

    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        if not probe:
            p.append(f"{service}: no {kind}")
        elif "grpc" not in probe:
            p.append(f"{service}: {kind} is not a native grpc probe")
        elif probe["grpc"].get("port") != port:
            p.append(f"{service}: {kind} probes port {probe['grpc'].get('port')}, not the gRPC port {port}")
    if c.get("readinessProbe", {}).get("grpc", {}).get("service", "") == "":
        p.append(f"{service}: readinessProbe checks health service \"\", which is SERVING before the store is ready")

    res = c.get("resources") or {}
    for bound in ("requests", "limits"):
        for what in ("cpu", "memory"):
            if what not in (res.get(bound) or {}):
                p.append(f"{service}: no {what} {bound[:-1]}")

    pod_sc = pod.get("securityContext") or {}
    sc = c.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        p.append(f"{service}: runAsNonRoot is not true")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        p.append(f"{service}: runs as uid 0")
    if sc.get("readOnlyRootFilesystem") is not True:
        p.append(f"{service}: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        p.append(f"{service}: allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        p.append(f"{service}: privileged")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        p.append(f"{service}: capabilities do not drop ALL")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        p.append(f"{service}: seccompProfile is {seccomp}, not RuntimeDefault")

    mounts = r.mount_paths(service)
    data_dir = env.get("CAPSTAN_DATA_DIR")
    for path in ("/tmp", data_dir.value if data_dir else None):
        if path is None:
            p.append(f"{service}: CAPSTAN_DATA_DIR is not set")
        elif path not in mounts:
            p.append(f"{service}: {path} is not a mounted volume, but the root filesystem is read-only")

    sa = pod.get("serviceAccountName")
    if not sa or r.get("ServiceAccount", sa) is None:
        p.append(f"{service}: no ServiceAccount of its own (serviceAccountName {sa!r})")

    deadline = int((env.get("CAPSTAN_SHUTDOWN_DEADLINE_SECONDS") or _Default("20")).value)
    pre_stop = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= deadline + pre_stop:
        p.append(
            f"{service}: terminationGracePeriodSeconds {grace} is not above preStop sleep {pre_stop} s"
            f" + CAPSTAN_SHUTDOWN_DEADLINE_SECONDS {deadline}"
        )

    db = env.get("CAPSTAN_DATABASE_URL")
    if db is None or not db.from_secret:
        p.append(f"{service}: CAPSTAN_DATABASE_URL does not come from a Secret")
    if (env.get("CAPSTAN_AUTH") or _Default("jwt")).value != "jwt":
        p.append(f"{service}: CAPSTAN_AUTH is not jwt")
    jwt = env.get("CAPSTAN_JWT_SECRET_FILE")
    if jwt is None or not _on_secret_volume(pod, c, jwt.value or ""):
        p.append(f"{service}: CAPSTAN_JWT_SECRET_FILE is not a file on a mounted Secret")
    if (env.get("CAPSTAN_LOG_FORMAT") or _Default("text")).value != "json":
        p.append(f"{service}: CAPSTAN_LOG_FORMAT is not json")
    if int((env.get("CAPSTAN_MAX_CONNECTION_AGE_SECONDS") or _Default("0")).value) <= 0:
        p.append(f"{service}: CAPSTAN_MAX_CONNECTION_AGE_SECONDS is not set, so clients stay pinned to one pod")

    pdbs = [d for d in r.of_kind("PodDisruptionBudget") if selects(d["spec"].get("selector") or {}, labels)]
    if not pdbs:
        p.append(f"{service}: no PodDisruptionBudget")
    for pdb in pdbs:
        min_available = pdb["spec"].get("minAvailable")
        if isinstance(min_available, int) and min_available >= (dep["spec"].get("replicas") or 1):
            p.append(f"{service}: PodDisruptionBudget minAvailable {min_available} blocks every drain")

    hpas = [
        h
        for h in r.of_kind("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"].get("kind") == "Deployment" and h["spec"]["scaleTargetRef"].get("name") == service
    ]
    if not hpas:
        p.append(f"{service}: no HorizontalPodAutoscaler")
    for hpa in hpas:
        if hpa["apiVersion"] != "autoscaling/v2":
            p.append(f"{service}: HorizontalPodAutoscaler is {hpa['apiVersion']}, not autoscaling/v2")
        if (hpa["spec"].get("minReplicas") or 1) < 2:
            p.append(f"{service}: HorizontalPodAutoscaler minReplicas < 2")
    return p


class _Default:
    """Stands for a key the manifests leave to the binary's default."""

    def __init__(self, value: str):
        self.value = value


def _on_secret_volume(pod: dict, container: dict, path: str) -> bool:
    secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
    return any(
        m["name"] in secret_volumes and path.startswith(m["mountPath"].rstrip("/") + "/")
        for m in container.get("volumeMounts", [])
    )


def _pod_labels(r: Rendered, service: str) -> dict:
    return r.deployment(service)["spec"]["template"]["metadata"].get("labels") or {}


def _ingress_rules(r: Rendered, service: str, port: int) -> tuple[bool, list[dict]]:
    """Whether a policy isolates the pods, and the rules admitting traffic to `port`."""
    labels = _pod_labels(r, service)
    isolated, rules = False, []
    for pol in r.of_kind("NetworkPolicy"):
        spec = pol["spec"]
        if not selects(spec.get("podSelector") or {}, labels):
            continue
        if "Ingress" in (spec.get("policyTypes") or ["Ingress"]):
            isolated = True
        for rule in spec.get("ingress") or []:
            ports = rule.get("ports")
            if not ports or any(pt.get("port") in (port, "grpc") for pt in ports):
                rules.append(rule)
    return isolated, rules


def check_network(r: Rendered) -> list[str]:
    p: list[str] = []
    try:
        pipeline_labels = _pod_labels(r, "pipeline-svc")
        isolated, rules = _ingress_rules(r, "registry-svc", GRPC_PORT["registry-svc"])
        if not isolated:
            p.append("registry-svc: no NetworkPolicy isolates its pods")
        for rule in rules:
            for peer in rule.get("from") or [{}]:
                pod_sel = peer.get("podSelector")
                if set(peer) != {"podSelector"} or not pod_sel or not selects(pod_sel, pipeline_labels) or not pod_sel.get("matchLabels"):
                    p.append(f"registry-svc: gRPC port admits {peer or 'everyone'}, not only pipeline-svc pods")
        if isolated and not rules:
            p.append("registry-svc: NetworkPolicy admits nobody, not even pipeline-svc")

        isolated, rules = _ingress_rules(r, "pipeline-svc", GRPC_PORT["pipeline-svc"])
        if not isolated:
            p.append("pipeline-svc: no NetworkPolicy isolates its pods")
        for rule in rules:
            for peer in rule.get("from") or [{}]:
                exprs = (peer.get("namespaceSelector") or {}).get("matchExpressions") or []
                named = any(e["key"] == NAMESPACE_NAME_LABEL and e["operator"] == "In" and e.get("values") for e in exprs)
                if "ipBlock" in peer or not named:
                    p.append(f"pipeline-svc: gRPC port admits {peer or 'everyone'}, not only named namespaces")

        url = (r.env("pipeline-svc").get("CAPSTAN_REGISTRY_URL") or _Default("")).value or ""
        host = urlsplit(url).hostname or ""
        svc = r.get("Service", host.split(".")[0])
        if svc is None or svc["spec"].get("clusterIP") != "None" or not selects(
            {"matchLabels": svc["spec"].get("selector") or {}}, _pod_labels(r, "registry-svc")
        ):
            p.append(f"pipeline-svc: CAPSTAN_REGISTRY_URL {url!r} is not the headless registry-svc Service")
    except ManifestError as e:
        p.append(str(e))
    return p


def check_identity(r: Rendered) -> list[str]:
    p: list[str] = []
    try:
        registry = r.env("registry-svc")
        audience = (registry.get("CAPSTAN_OIDC_AUDIENCE") or _Default("")).value or ""
        if not (registry.get("CAPSTAN_OIDC_ISSUERS") or _Default("")).value or not audience:
            p.append("registry-svc: no CAPSTAN_OIDC_ISSUERS and CAPSTAN_OIDC_AUDIENCE, so it cannot verify service-account tokens")
        path = (r.env("pipeline-svc").get("CAPSTAN_REGISTRY_TOKEN_FILE") or _Default("")).value or ""
        pod = r.deployment("pipeline-svc")["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"].rstrip("/") for m in r.container("pipeline-svc").get("volumeMounts", [])}
        token_audiences = [
            (src["serviceAccountToken"].get("audience"), f"{mounts[v['name']]}/{src['serviceAccountToken']['path']}")
            for v in pod.get("volumes", [])
            if v["name"] in mounts
            for src in (v.get("projected") or {}).get("sources", [])
            if "serviceAccountToken" in src
        ]
        found = [aud for aud, file in token_audiences if file == path]
        if not found:
            p.append(f"pipeline-svc: CAPSTAN_REGISTRY_TOKEN_FILE {path!r} is not a projected service-account token (a static token never rotates)")
        elif found[0] != audience:
            p.append(f"pipeline-svc: its registry token is for audience {found[0]!r}, but registry-svc requires {audience!r}")
    except ManifestError as e:
        p.append(str(e))
    return p


def _static_registry_token(r: Rendered) -> None:
    for v in r.deployment("pipeline-svc")["spec"]["template"]["spec"]["volumes"]:
        if v["name"] == "registry-token":
            v.pop("projected")
            v["secret"] = {"secretName": "capstan-registry-token"}


def _token_audience(r: Rendered, audience: str) -> None:
    for v in r.deployment("pipeline-svc")["spec"]["template"]["spec"]["volumes"]:
        for src in (v.get("projected") or {}).get("sources", []):
            if "serviceAccountToken" in src:
                src["serviceAccountToken"]["audience"] = audience


# --- self-test: each break must be reported -----------------------------------------

Break = Callable[[Rendered], None]


def _container(r: Rendered, service: str = "registry-svc") -> dict:
    return r.container(service)


def _set_config(r: Rendered, key: str, value: str) -> None:
    for cm in r.of_kind("ConfigMap"):
        if key in (cm.get("data") or {}):
            cm["data"][key] = value


def _drop_kind(kind: str, name: str) -> Break:
    def apply(r: Rendered) -> None:
        r.docs = [d for d in r.docs if not (d["kind"] == kind and d["metadata"]["name"] == name)]

    return apply


BREAKS: list[tuple[str, Break, str]] = [
    ("one replica", lambda r: r.deployment("pipeline-svc")["spec"].update(replicas=1), "replicas 1 < 2"),
    ("no readiness probe", lambda r: _container(r).pop("readinessProbe"), "no readinessProbe"),
    ("no liveness probe", lambda r: _container(r, "pipeline-svc").pop("livenessProbe"), "no livenessProbe"),
    ("no startup probe", lambda r: _container(r).pop("startupProbe"), "no startupProbe"),
    (
        "exec probe",
        lambda r: _container(r).update(livenessProbe={"exec": {"command": ["true"]}}),
        "not a native grpc probe",
    ),
    (
        "readiness on \"\"",
        lambda r: _container(r)["readinessProbe"]["grpc"].pop("service"),
        "SERVING before the store is ready",
    ),
    ("no memory limit", lambda r: _container(r)["resources"]["limits"].pop("memory"), "no memory limit"),
    ("no requests", lambda r: _container(r, "pipeline-svc")["resources"].pop("requests"), "no cpu request"),
    (
        "writable root",
        lambda r: _container(r)["securityContext"].update(readOnlyRootFilesystem=False),
        "readOnlyRootFilesystem",
    ),
    (
        "privilege escalation",
        lambda r: _container(r)["securityContext"].pop("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation",
    ),
    (
        "root allowed",
        lambda r: (_container(r)["securityContext"].pop("runAsNonRoot"),
                   r.deployment("registry-svc")["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")),
        "runAsNonRoot",
    ),
    ("capabilities kept", lambda r: _container(r)["securityContext"].pop("capabilities"), "drop ALL"),
    (
        "short grace period",
        lambda r: r.deployment("registry-svc")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=20),
        "terminationGracePeriodSeconds 20",
    ),
    ("no PDB", _drop_kind("PodDisruptionBudget", "registry-svc"), "no PodDisruptionBudget"),
    ("no HPA", _drop_kind("HorizontalPodAutoscaler", "pipeline-svc"), "no HorizontalPodAutoscaler"),
    ("text logs", lambda r: _set_config(r, "CAPSTAN_LOG_FORMAT", "text"), "CAPSTAN_LOG_FORMAT"),
    ("pinned connections", lambda r: _set_config(r, "CAPSTAN_MAX_CONNECTION_AGE_SECONDS", "0"), "MAX_CONNECTION_AGE"),
    ("auth off", lambda r: _set_config(r, "CAPSTAN_AUTH", "disabled"), "CAPSTAN_AUTH is not jwt"),
    (
        "database URL in plain text",
        lambda r: _container(r).update(env=[{"name": "CAPSTAN_DATABASE_URL", "value": "postgres://x"}]),
        "CAPSTAN_DATABASE_URL does not come from a Secret",
    ),
    ("no registry policy", _drop_kind("NetworkPolicy", "registry-svc-ingress"), "registry-svc: NetworkPolicy admits nobody"),
    (
        "no policies",
        lambda r: setattr(r, "docs", [d for d in r.docs if d["kind"] != "NetworkPolicy"]),
        "no NetworkPolicy isolates",
    ),
    (
        "registry open to a namespace",
        lambda r: r.get("NetworkPolicy", "registry-svc-ingress")["spec"]["ingress"][0]["from"].append(
            {"namespaceSelector": {}}
        ),
        "not only pipeline-svc pods",
    ),
    (
        "pipeline open to all",
        lambda r: r.get("NetworkPolicy", "pipeline-svc-ingress")["spec"]["ingress"][0].pop("from"),
        "not only named namespaces",
    ),
    ("static registry token", _static_registry_token, "is not a projected service-account token"),
    ("token for another audience", lambda r: _token_audience(r, "kubernetes"), "for audience 'kubernetes'"),
    ("no issuer", lambda r: _set_config(r, "CAPSTAN_OIDC_ISSUERS", ""), "no CAPSTAN_OIDC_ISSUERS"),
    (
        "registry behind ClusterIP",
        lambda r: _set_config(r, "CAPSTAN_REGISTRY_URL", "http://registry-svc:50051"),
        "not the headless registry-svc Service",
    ),
]


def self_test(rendered: Rendered) -> int:
    passed, failed = 0, 0
    baseline = check(rendered)
    if baseline:
        print("self-test: FAIL the unbroken overlay already fails:", *baseline, sep="\n  ")
        failed += 1
    for name, apply, expected in BREAKS:
        broken = copy.deepcopy(rendered)
        apply(broken)
        found = check(broken)
        if any(expected in f for f in found):
            passed += 1
            print(f"self-test: ok   {name}: reported")
        else:
            failed += 1
            print(f"self-test: FAIL {name}: expected a problem containing {expected!r}, got {found}")
    print(f"self-test: {passed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--overlay", default="prod", help="overlay name or kustomization dir (default prod)")
    src.add_argument("--rendered", help="already rendered YAML (skips kubectl)")
    p.add_argument("--self-test", action="store_true", help="prove every check can fail")
    args = p.parse_args(argv)
    try:
        rendered = Rendered.load(args.overlay, args.rendered)
    except ManifestError as e:
        print(f"check_prod: {e}", file=sys.stderr)
        return 2
    if args.self_test:
        return self_test(rendered)
    problems = check(rendered)
    for problem in problems:
        print(f"check_prod: FAIL {problem}")
    if problems:
        print(f"check_prod: {len(problems)} problem(s) in the {args.rendered or args.overlay} overlay")
        return 1
    print(f"check_prod: {args.rendered or args.overlay} overlay passes every production check")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
