#!/usr/bin/env python3
"""The environment a Kubernetes overlay gives a service, for running the binary off-cluster.

    manifest_env.py [--overlay prod | --rendered FILE] SERVICE [--set KEY=VALUE ...]
                    [--format env|json|describe|probes] [-- COMMAND [ARGS...]]

Collects the keys the rendered Deployment sets (its ConfigMaps through envFrom, then env).
Values that only make sense inside the cluster must be replaced with --set, and a
replacement for a key the manifests do not set is refused, so the process runs with
exactly the manifests' keys. A value must be replaced when it
  - comes from a Secret,
  - is a path under one of the container's volume mounts,
  - binds every interface (0.0.0.0:PORT, [::]:PORT),
  - is a URL to a rendered Service or a cluster DNS name, or to S3 object storage.

With `-- COMMAND`, COMMAND is executed with that environment and nothing else (no PATH,
no HOME). Otherwise the environment is printed: `env` (KEY=VALUE lines), `json`, or
`describe` (every key with its manifest value, source and why it must be replaced, no
replacement required). `probes` prints the container's gRPC probes as JSON.
Exit status 2: the manifests cannot be read or a replacement is missing or unknown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from urllib.parse import urlsplit

from manifests import EnvVar, ManifestError, Rendered

CLUSTER_DNS = re.compile(r"\.svc(\.cluster\.local)?\.?$")


def cluster_only(key: str, var: EnvVar, rendered: Rendered, service: str) -> str | None:
    """Why `var` cannot be used off-cluster, or None."""
    if var.from_secret:
        return f"comes from {var.source}"
    value = var.value or ""
    for mount in rendered.mount_paths(service):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return f"is a path under the volume mount {mount}"
    if value.startswith(("0.0.0.0:", "[::]:")):
        return "binds every interface of the pod"
    # Lists are comma-separated; `ISSUER=JWKS_URL` pairs hold two URLs.
    for part in re.split(r"[,=]", value):
        url = urlsplit(part.strip())
        if url.scheme == "s3":
            return "names cluster object storage"
        if url.scheme and url.hostname and (
            url.hostname in rendered.service_names() or CLUSTER_DNS.search(url.hostname)
        ):
            return f"names the cluster Service {url.hostname}"
    return None


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ManifestError(f"--set {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def resolve(rendered: Rendered, service: str, sets: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The final environment, and the problems that forbid using it."""
    manifest = rendered.env(service)
    problems = [
        f"--set {k}: the {service} manifests do not set {k}; the process must get exactly their keys"
        for k in sets
        if k not in manifest
    ]
    final = {}
    for key, var in sorted(manifest.items()):
        if key in sets:
            final[key] = sets[key]
            continue
        reason = cluster_only(key, var, rendered, service)
        if reason:
            shown = var.value if var.value is not None else "<secret>"
            problems.append(f"{key}={shown} {reason}: replace it with --set {key}=...")
        else:
            final[key] = var.value or ""
    for key, value in final.items():
        if "\n" in value or "\0" in value:
            problems.append(f"{key}: value holds a newline or NUL")
    return final, problems


def probes(rendered: Rendered, service: str) -> dict:
    container = rendered.container(service)
    out = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = (container.get(kind) or {}).get("grpc")
        if grpc is not None:
            out[kind.removesuffix("Probe")] = {"port": grpc["port"], "service": grpc.get("service", "")}
    return out


def main(argv: list[str]) -> int:
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--overlay", default="prod", help="overlay name or kustomization dir (default prod)")
    src.add_argument("--rendered", help="already rendered YAML (skips kubectl)")
    p.add_argument("service", help="Deployment (and container) name, e.g. registry-svc")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="replace a manifest value")
    p.add_argument("--format", choices=["env", "json", "describe", "probes"], default="env")
    args = p.parse_args(argv)
    try:
        rendered = Rendered.load(args.overlay, args.rendered)
        if args.format == "probes":
            print(json.dumps(probes(rendered, args.service), indent=2))
            return 0
        if args.format == "describe" and not command:
            desc = {
                k: {"value": v.value, "source": v.source, "cluster_only": cluster_only(k, v, rendered, args.service)}
                for k, v in sorted(rendered.env(args.service).items())
            }
            print(json.dumps(desc, indent=2))
            return 0
        final, problems = resolve(rendered, args.service, parse_sets(args.set))
    except ManifestError as e:
        print(f"manifest_env: {e}", file=sys.stderr)
        return 2
    if problems:
        print(f"manifest_env: cannot run {args.service} with the manifests' environment:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    if command:
        try:
            os.execve(command[0], command, final)
        except OSError as e:
            print(f"manifest_env: cannot execute {command[0]}: {e}", file=sys.stderr)
            return 2
    if args.format == "json":
        print(json.dumps(final, indent=2))
    else:
        for key, value in final.items():
            print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
