#!/usr/bin/env python3
"""Dagster peer of the pipeline bench: a job of N chained no-op ops, run in process.

Installs nothing: run it with a Python that has `dagster` (tests/bench/run_pipeline.sh
creates /tmp/capstan-dagster-venv with it when missing). Two ways of running the job:

- ephemeral: `job.execute_in_process()` as documented, which makes an in-memory instance
  for every run (nothing durable);
- sqlite: the same against one `DagsterInstance.local_temp()`, Dagster's default local
  instance with SQLite run and event-log storage (the durable counterpart of Capstan's
  SQLite store).

Values pass between ops in memory (execute_in_process's default IO manager), the console
logger is set to ERROR and telemetry is off (no file writes or uploads of its own), so
neither terminal output, pickled files nor telemetry is counted against Dagster.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def build_job(steps):
    from dagster import job, op

    def make(i):
        name = f"noop_{i:03d}"
        if i == 0:

            @op(name=name)
            def first():
                return 0

            return first

        @op(name=name)
        def step(x):
            return x + 1

        return step

    ops = [make(i) for i in range(steps)]

    @job(name=f"linear_{steps}")
    def linear():
        x = ops[0]()
        for o in ops[1:]:
            x = o(x)

    return linear


def stats(samples):
    s = sorted(samples)
    rank = lambda p: s[round((len(s) - 1) * p)]  # nearest rank, as pipeline_bench
    return {
        "n": len(s),
        "min_ms": s[0],
        "p50_ms": rank(0.5),
        "p99_ms": rank(0.99),
        "max_ms": s[-1],
        "mean_ms": statistics.fmean(s),
    }


def measure(job, runs, warmup, instance_factory, run_config):
    out = []
    for i in range(warmup + runs):
        instance = instance_factory()
        t0 = time.perf_counter()
        result = job.execute_in_process(instance=instance, run_config=run_config)
        elapsed = (time.perf_counter() - t0) * 1e3
        if not result.success:
            raise SystemExit(f"the Dagster run {result.run_id} failed")
        if i >= warmup:
            out.append(elapsed)
    return stats(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="docs/bench-dagster.json")
    args = p.parse_args()
    if not (1 <= args.steps <= 200 and args.runs > 0 and args.warmup >= 0):
        raise SystemExit("--steps must be 1-200, --runs positive, --warmup not negative")

    load_before = loadavg()
    # Before the import: Dagster reads it when it loads.
    os.environ["DAGSTER_DISABLE_TELEMETRY"] = "yes"
    t0 = time.perf_counter()
    try:
        import dagster
        from dagster import DagsterInstance
    except ImportError:
        raise SystemExit(
            "dagster is not installed for this Python; run tests/bench/run_pipeline.sh "
            "or: python3 -m venv /tmp/capstan-dagster-venv && "
            "/tmp/capstan-dagster-venv/bin/pip install dagster"
        )
    import_s = time.perf_counter() - t0
    job = build_job(args.steps)
    run_config = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

    results = {}
    results["ephemeral"] = measure(
        job, args.runs, args.warmup, lambda: None, run_config
    )
    print(f"ephemeral instance: p50 {results['ephemeral']['p50_ms']:.1f} ms", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="capstan-dagster-") as home:
        instance = DagsterInstance.local_temp(
            tempdir=home, overrides={"telemetry": {"enabled": False}}
        )
        storage = type(instance.run_storage).__name__
        results["sqlite"] = measure(
            job, args.runs, args.warmup, lambda: instance, run_config
        )
        instance.dispose()
    print(f"SQLite instance ({storage}): p50 {results['sqlite']['p50_ms']:.1f} ms", file=sys.stderr)

    out = {
        "tool": "dagster-bench",
        "dagster_version": dagster.__version__,
        "python": platform.python_version(),
        "steps": args.steps,
        "warmup": args.warmup,
        "import_s": import_s,
        "loadavg_before": load_before,
        "sqlite_run_storage": storage,
        "runs": results,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
