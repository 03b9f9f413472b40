#!/usr/bin/env bash
# Capstan vs MLflow benchmark, run by hand (never in CI): release build, the Capstan load
# generator on SQLite and Postgres, the same operations against MLflow on both, then
# docs/benchmarks.md. Traffic stays on 127.0.0.1. Settings (environment):
#   BENCH_BACKEND=both|sqlite|postgres   BENCH_DURATION_SECS=5   BENCH_ARTIFACT_MIB=16,256
#   BENCH_OUT_DIR=docs (JSON results and benchmarks.md)
#   MLFLOW_VENV=/tmp/capstan-mlflow-venv (created with mlflow, uvloop, psycopg2-binary if missing)
#   MLFLOW_WORKERS=4   BENCH_SKIP_MLFLOW=1 (Capstan only)
set -euo pipefail
cd "$(dirname "$0")/../.."

backend=${BENCH_BACKEND:-both}
duration=${BENCH_DURATION_SECS:-5}
artifact_mib=${BENCH_ARTIFACT_MIB:-16,256}
out=${BENCH_OUT_DIR:-docs}
venv=${MLFLOW_VENV:-/tmp/capstan-mlflow-venv}
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$out"

echo "== building release binaries" >&2
cargo build --release -p registry-svc -p capstan-tests --bin registry-svc --bin bench

echo "== Capstan ($backend)" >&2
"$target/release/bench" --backend "$backend" --out "$out/bench-capstan.json" \
  --duration-secs "$duration" --artifact-mib "$artifact_mib"

mlflow_json=$out/bench-mlflow.json
if [ "${BENCH_SKIP_MLFLOW:-0}" = 1 ]; then
  mlflow_json=""
else
  if [ ! -x "$venv/bin/mlflow" ]; then
    echo "== installing MLflow into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet mlflow uvloop psycopg2-binary
  fi
  echo "== MLflow ($backend)" >&2
  python3 tests/bench/mlflow_bench.py --mlflow "$venv/bin/mlflow" --backend "$backend" \
    --out "$mlflow_json" --duration-secs "$duration" --artifact-mib "$artifact_mib" \
    --workers "${MLFLOW_WORKERS:-4}"
fi

echo "== report" >&2
python3 tests/bench/report.py --capstan "$out/bench-capstan.json" --mlflow "$mlflow_json" \
  --out "$out/benchmarks.md" \
  --commands "BENCH_BACKEND=$backend BENCH_DURATION_SECS=$duration BENCH_ARTIFACT_MIB=$artifact_mib tests/bench/run.sh"
