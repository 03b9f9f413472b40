#!/usr/bin/env bash
# Before/after of a change, interleaved in one session (A B A B …), so that both sides see
# the same machine: the registry bench and the pipeline bench of two release builds.
# usage: tests/bench/ab.sh BEFORE_BIN_DIR AFTER_BIN_DIR OUT_DIR [ROUNDS]
# Each BIN_DIR holds registry-svc, pipeline-svc, bench and pipeline_bench from one commit's
# `cargo build --release -p registry-svc -p pipeline-svc -p capstan-tests`. Summarize with
# `python3 tests/bench/ab_summary.py OUT_DIR`.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,7p "$0" >&2; exit 2; }
before=$1 after=$2 out=$3 rounds=${4:-3}
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for side in before after; do
    bin=$before; [ "$side" = after ] && bin=$after
    echo "== round $round $side registry (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$bin/bench" --backend both --duration-secs 3 --warmup-secs 1 --artifact-mib 16 \
      --artifact-rounds 2 --out "$out/reg-$side-$round.json" > "$out/reg-$side-$round.log" 2>&1
    echo "== round $round $side pipeline (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$bin/pipeline_bench" --backend both --showcase-runs 5 --first-event-runs 30 \
      --queued-runs 100 --noop-runs 50 --out "$out/pipe-$side-$round.json" \
      > "$out/pipe-$side-$round.log" 2>&1
  done
done
