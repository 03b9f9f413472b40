#!/usr/bin/env bash
# Before/after of a change, interleaved in one session (A B A B …), so that both sides see
# the same machine: the registry bench and the pipeline bench of two release builds.
# usage: [BEFORE_ENV='K=V …'] [AFTER_ENV='K=V …'] tests/bench/ab.sh BEFORE_BIN_DIR AFTER_BIN_DIR OUT_DIR [ROUNDS]
# Each BIN_DIR holds registry-svc, pipeline-svc, bench and pipeline_bench from one commit's
# `cargo build --release -p registry-svc -p pipeline-svc -p capstan-tests`. BEFORE_ENV and
# AFTER_ENV set variables for one side's run (its servers inherit them), so the same
# binaries can be compared under two settings, such as tracing off and on.
# REGISTRY_ONLY=1 skips the pipeline bench, PIPELINE_ONLY=1 the registry bench; SHOWCASE_RUNS sets
# the demos per round (5 by default; about 30 give a stable demo p50). Summarize with
# `python3 tests/bench/ab_summary.py OUT_DIR [BEFORE_LABEL AFTER_LABEL]`.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,10p "$0" >&2; exit 2; }
before=$1 after=$2 out=$3 rounds=${4:-3}
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for side in before after; do
    bin=$before side_env=${BEFORE_ENV:-}
    [ "$side" = after ] && bin=$after side_env=${AFTER_ENV:-}
    # Word splitting of side_env is the point: each word is one K=V for env(1).
    # shellcheck disable=SC2086
    run() { env $side_env "$@"; }
    if [ -z "${PIPELINE_ONLY:-}" ]; then
      echo "== round $round $side registry (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
      run "$bin/bench" --backend both --duration-secs 3 --warmup-secs 1 --artifact-mib 16 \
        --artifact-rounds 2 --out "$out/reg-$side-$round.json" > "$out/reg-$side-$round.log" 2>&1
    fi
    [ -n "${REGISTRY_ONLY:-}" ] && continue
    echo "== round $round $side pipeline (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    run "$bin/pipeline_bench" --backend both --showcase-runs "${SHOWCASE_RUNS:-5}" --first-event-runs 30 \
      --queued-runs 100 --noop-runs 50 --out "$out/pipe-$side-$round.json" \
      > "$out/pipe-$side-$round.log" 2>&1
  done
done
