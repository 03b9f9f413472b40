#!/usr/bin/env python3
"""Checks the workspace's rust-version against what Cargo.lock needs.

Fails when a member does not declare the workspace's rust-version, or when that version is
lower than the newest `rust-version` of any package in the locked graph (`cargo metadata`),
naming the packages that need more. What our own code needs of the standard library is
clippy's part: its incompatible_msrv lint flags any std item newer than the rust-version.
"""

import json
import subprocess
import sys


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
members = set(meta["workspace_members"])
ours = {p["name"]: p.get("rust_version") for p in meta["packages"] if p["id"] in members}
declared = set(ours.values())
if None in declared or len(declared) != 1:
    sys.exit(f"every member must inherit the workspace's rust-version; they declare: {ours}")
(workspace,) = declared

needs = [
    (version(p["rust_version"]), p["rust_version"], f'{p["name"]} {p["version"]}')
    for p in meta["packages"]
    if p["id"] not in members and p.get("rust_version")
]
newest = max(v for v, _, _ in needs)
top = ", ".join(f"{name} ({text})" for v, text, name in needs if v == newest)
if version(workspace) < newest:
    too_new = sorted(
        (f"{name} ({text})" for v, text, name in needs if v > version(workspace)),
    )
    sys.exit(
        f"rust-version {workspace} in Cargo.toml is lower than Cargo.lock needs: "
        + ", ".join(too_new)
    )
print(f"rust-version {workspace} covers Cargo.lock ({len(needs)} packages declare one; newest: {top})")
