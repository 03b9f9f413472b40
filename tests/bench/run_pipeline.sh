#!/usr/bin/env bash
# Pipeline benchmark, run by hand (never in CI): release build of registry-svc,
# pipeline-svc and pipeline_bench; Dagster's N-step linear job in the same session; then
# the "Pipeline" section of docs/benchmarks.md (between its markers, the rest of the file
# is kept). Traffic stays on 127.0.0.1. Settings (environment):
#   BENCH_BACKEND=both|sqlite|postgres   BENCH_STEPS=20   BENCH_OUT_DIR=docs
#   BENCH_SHOWCASE_RUNS=10 BENCH_FIRST_EVENT_RUNS=50 BENCH_QUEUED_RUNS=200 BENCH_NOOP_RUNS=100
#   DAGSTER_VENV=/tmp/capstan-dagster-venv (created with `pip install dagster` if missing)
#   DAGSTER_RUNS=30   BENCH_SKIP_DAGSTER=1 (Capstan only)
set -euo pipefail
cd "$(dirname "$0")/../.."

backend=${BENCH_BACKEND:-both}
steps=${BENCH_STEPS:-20}
out=${BENCH_OUT_DIR:-docs}
venv=${DAGSTER_VENV:-/tmp/capstan-dagster-venv}
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$out"

echo "== building release binaries" >&2
cargo build --release -p registry-svc -p pipeline-svc -p capstan-tests \
  --bin registry-svc --bin pipeline-svc --bin pipeline_bench

dagster_args=()
if [ "${BENCH_SKIP_DAGSTER:-0}" != 1 ]; then
  if [ ! -x "$venv/bin/dagster" ]; then
    echo "== installing Dagster into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet dagster
  fi
  echo "== Dagster: $steps-step linear job, in process" >&2
  "$venv/bin/python" tests/bench/dagster_bench.py --steps "$steps" \
    --runs "${DAGSTER_RUNS:-30}" --out "$out/bench-dagster.json"
  dagster_args=(--dagster "$out/bench-dagster.json")
fi

echo "== Capstan pipeline ($backend)" >&2
"$target/release/pipeline_bench" --backend "$backend" --noop-steps "$steps" \
  --showcase-runs "${BENCH_SHOWCASE_RUNS:-10}" \
  --first-event-runs "${BENCH_FIRST_EVENT_RUNS:-50}" \
  --queued-runs "${BENCH_QUEUED_RUNS:-200}" \
  --noop-runs "${BENCH_NOOP_RUNS:-100}" \
  "${dagster_args[@]}" --out "$out/bench-pipeline.json" --docs "$out/benchmarks.md" \
  --commands "BENCH_BACKEND=$backend BENCH_STEPS=$steps tests/bench/run_pipeline.sh"
