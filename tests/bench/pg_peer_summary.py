#!/usr/bin/env python3
"""The figures of tests/bench/pg_peer.sh as a Markdown table: Capstan as a share of pgbench.

usage: pg_peer_summary.py OUT_DIR
"""
import json
import pathlib
import re
import statistics
import sys

out = pathlib.Path(sys.argv[1])
rounds = sorted(int(p.stem.rsplit("-", 1)[1]) for p in out.glob("capstan-*.json"))


def pgbench(name, r):
    """(transactions a second, p50 µs) of one pgbench run, from its summary and its log."""
    text = (out / f"pgbench-{name}-{r}.txt").read_text()
    tps = float(re.search(r"tps = ([0-9.]+)", text).group(1))
    # Per-transaction log lines: client, transaction, latency µs, script, epoch, µs.
    latencies = [int(line.split()[2]) for log in out.glob(f"pgbench-{name}-{r}.*")
                 if log.suffix != ".txt" for line in log.read_text().splitlines()]
    return tps, statistics.median(latencies)


def capstan(r):
    doc = json.loads((out / f"capstan-{r}.json").read_text())
    return doc["backends"]["postgres"]["ops"], doc["transport"]


rows = []
for r in rounds:
    ops, transport = capstan(r)
    set_tps, _ = pgbench("set", r)
    life_tps, _ = pgbench("lifecycle", r)
    _, get_p50 = pgbench("get", r)
    bare = transport["bare_check_c1"]["p50_us"]
    rows.append({
        "set": (ops["set_alias_c16"]["throughput_per_s"], set_tps),
        # One lifecycle is two RPCs in Capstan, two transactions in pgbench's script.
        "life": (ops["lifecycle_c16"]["throughput_per_s"], life_tps),
        "get": (ops["get_alias_c1"]["p50_us"], bare + get_p50, bare, get_p50),
    })

print("| round | SetAlias 16 conc. /s | pgbench /s | share | CreateRun→UpdateRun 16 conc. /s | pgbench /s | share | GetAlias p50 µs, 1 conc. | bare transport + pgbench select p50 µs | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r, row in zip(rounds, rows):
    (s, sp), (l, lp), (g, peer, bare, sel) = row["set"], row["life"], row["get"]
    print(f"| {r} | {s:,.0f} | {sp:,.0f} | {s / sp:.0%} | {l:,.0f} | {lp:,.0f} | {l / lp:.0%} "
          f"| {g:,.0f} | {peer:,.0f} ({bare:,.0f} + {sel:,.0f}) | {g / peer:.2f}× |")
