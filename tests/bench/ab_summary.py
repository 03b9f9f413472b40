#!/usr/bin/env python3
"""Median over the rounds of tests/bench/ab.sh, before and after, as a Markdown table.

usage: ab_summary.py OUT_DIR [BEFORE_LABEL AFTER_LABEL]
"""
import json
import pathlib
import statistics
import sys

out = pathlib.Path(sys.argv[1])
before_label, after_label = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("before", "after")
rounds = sorted({int(p.stem.rsplit("-", 1)[1]) for p in out.glob("*-before-*.json")})


def runs(kind, side):
    return [json.loads((out / f"{kind}-{side}-{r}.json").read_text()) for r in rounds]


def row(name, kind, path):
    def at(doc):
        for key in path:
            doc = doc[key]
        return doc
    try:
        b = statistics.median(at(d) for d in runs(kind, "before"))
        a = statistics.median(at(d) for d in runs(kind, "after"))
    except (KeyError, IndexError, FileNotFoundError):
        return
    print(f"| {name} | {b:,.1f} | {a:,.1f} | {a / b:.2f} |")


print(f"| measurement (median of the rounds) | {before_label} | {after_label} | {after_label} ÷ {before_label} |")
print("|---|---:|---:|---:|")
for be in ("sqlite", "postgres"):
    for op, label in [("get_alias_c1", "GetAlias 1 concurrent"), ("get_alias_c64", "GetAlias 64 concurrent"),
                      ("set_alias_c16", "SetAlias 16 concurrent"), ("lifecycle_c16", "CreateRun→UpdateRun 16 concurrent")]:
        row(f"{be}: {label}, req/s", "reg", ("backends", be, "ops", op, "throughput_per_s"))
        row(f"{be}: {label}, p50 µs", "reg", ("backends", be, "ops", op, "p50_us"))
        row(f"{be}: {label}, server CPU µs/op", "reg", ("backends", be, "ops", op, "server_cpu_us_per_op"))
    row(f"{be}: 16 MiB upload MB/s", "reg", ("backends", be, "artifacts", 0, "upload_mb_s"))
    row(f"{be}: 16 MiB download MB/s", "reg", ("backends", be, "artifacts", 0, "download_mb_s"))
    row(f"{be}: showcase_rich p50 ms (server)", "pipe", ("backends", be, "showcase_rich_server", "p50_ms"))
    row(f"{be}: StartDemo → first event p50 ms", "pipe", ("backends", be, "start_demo_first_event", "p50_ms"))
    row(f"{be}: 20 no-op steps p50 ms (server)", "pipe", ("backends", be, "noop", "server", "p50_ms"))
    row(f"{be}: QUEUED enqueue-to-start p50 ms (server)", "pipe", ("backends", be, "queued_enqueue_to_start_server", "p50_ms"))
