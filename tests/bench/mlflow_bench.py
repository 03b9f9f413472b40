#!/usr/bin/env python3
"""The Capstan benchmark's operations against an MLflow tracking server (run by hand).

Starts `mlflow server` on a fresh SQLite file or a fresh Postgres database with proxied
artifacts on the local filesystem, then measures GetAlias, SetAlias, the run lifecycle
(runs/create -> runs/update FINISHED) and artifact upload/download through the
mlflow-artifacts proxy, plus the server process tree's RSS. Writes JSON in the shape of
`bench --out` so that report.py can put both side by side. Loopback only; every loop is
bounded in time and count. Standard library only (the client must stay cheap: it shares
the machine's cores with the server).
"""

import argparse
import http.client
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

MIB = 1 << 20
MAX_OPS_PER_WORKER = 1_000_000
REQUEST_TIMEOUT = 120
ADMIN_URL = os.environ.get(
    "CAPSTAN_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
MODEL = "bench-model"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pids(root):
    """`root` and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command may contain spaces: fields after the closing paren.
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_rss_kib(root):
    """VmRSS summed over `root` and all its descendants."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root):
    """User + system CPU seconds summed over `root` and its live descendants."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


def self_cpu_s():
    t = os.times()
    return t.user + t.system


class Client:
    """One keep-alive HTTP/1.1 connection (a worker's own)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def call(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT
                )
            try:
                hdrs = dict(headers or {})
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    hdrs["Content-Type"] = "application/json"
                self.conn.request(method, path, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, data
            except (http.client.HTTPException, OSError):
                # A closed keep-alive connection: reconnect once.
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def ok(self, method, path, body=None):
        status, data = self.call(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status}: {data[:300]!r}")
        return json.loads(data) if data else {}


class Phase:
    def __init__(self, concurrency, duration):
        self.concurrency = concurrency
        self.duration = duration
        self.latencies = []
        self.errors = 0
        self.first_error = None
        self.cpu = None  # (server, client) CPU seconds in the measured window

    def pct_us(self, p):
        """Nearest rank; None (JSON null) without samples, as the Rust bench writes NaN."""
        if not self.latencies:
            return None
        return self.latencies[round((len(self.latencies) - 1) * p)] / 1e3

    def to_json(self):
        n = len(self.latencies)
        return {
            "concurrency": self.concurrency,
            "connections": self.concurrency,
            "duration_secs": self.duration,
            "ops": n,
            "throughput_per_s": n / self.duration,
            "p50_us": self.pct_us(0.50),
            "p90_us": self.pct_us(0.90),
            "p99_us": self.pct_us(0.99),
            "max_us": self.latencies[-1] / 1e3 if n else None,
            "mean_us": sum(self.latencies) / max(n, 1) / 1e3,
            "errors": self.errors,
            "first_error": self.first_error,
            "server_cpu_s": self.cpu and self.cpu[0],
            "client_cpu_s": self.cpu and self.cpu[1],
            "server_cpu_us_per_op": self.cpu and self.cpu[0] * 1e6 / max(n, 1),
            "client_cpu_us_per_op": self.cpu and self.cpu[1] * 1e6 / max(n, 1),
        }


def load(server, concurrency, warmup, duration, op):
    """`concurrency` closed-loop threads, each with its own connection; `op(client, worker, i)`.
    Also measures the CPU time of the server's process tree and of this process."""
    port = server.port
    start = time.perf_counter_ns() + 200_000_000  # after every thread has started
    measure_from = start + int(warmup * 1e9)
    end = measure_from + int(duration * 1e9)
    phase = Phase(concurrency, duration)
    lock = threading.Lock()

    def worker(w):
        client = Client(port)
        lat, errors, first = [], 0, None
        while time.perf_counter_ns() < start:
            time.sleep(0.001)
        for i in range(MAX_OPS_PER_WORKER):
            t0 = time.perf_counter_ns()
            if t0 >= end:
                break
            try:
                op(client, w, i)
                err = None
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                err = f"{type(e).__name__}: {e}"[:300]
            t1 = time.perf_counter_ns()
            if t0 < measure_from or t1 > end:
                continue
            if err is None:
                lat.append(t1 - t0)
            else:
                errors += 1
                first = first or err
        with lock:
            phase.latencies.extend(lat)
            phase.errors += errors
            phase.first_error = phase.first_error or first

    def cpu_sampler():
        time.sleep(max(0, (measure_from - time.perf_counter_ns()) / 1e9))
        before = (server.cpu_s(), self_cpu_s())
        time.sleep(max(0, (end - time.perf_counter_ns()) / 1e9))
        after = (server.cpu_s(), self_cpu_s())
        phase.cpu = (after[0] - before[0], after[1] - before[1])

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    threads.append(threading.Thread(target=cpu_sampler))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    phase.latencies.sort()
    return phase


class MlflowServer:
    def __init__(self, args, backend, tmp, job_execution):
        self.backend = backend
        # MLflow's job runner (7 huey consumers polling, ~0.1 core each while idle) serves
        # features this benchmark does not use; off unless asked for.
        self.env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if job_execution else "false"}
        self.port = free_port()
        self.db_name = None
        if backend == "sqlite":
            self.store_uri = f"sqlite:///{tmp}/mlflow.db"
        else:
            self.db_name = f"mlflow_bench_{uuid.uuid4().hex}"
            psql(f"CREATE DATABASE {self.db_name}")
            # psycopg2 by name: newer SQLAlchemy defaults `postgresql://` to psycopg 3.
            base = ADMIN_URL.rsplit("/", 1)[0].split("://", 1)[1]
            self.store_uri = f"postgresql+psycopg2://{base}/{self.db_name}"
        self.cmd = [
            args.mlflow,
            "server",
            "--backend-store-uri",
            self.store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            f"file://{tmp}/artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(args.workers),
        ]
        if args.uvicorn_opts:
            self.cmd += ["--uvicorn-opts", args.uvicorn_opts]
        self.log_path = f"{tmp}/mlflow-server.log"
        self.log = open(self.log_path, "wb")
        log("starting: " + " ".join(f"{k}={v}" for k, v in self.env.items()) + " " + shlex.join(self.cmd))
        # Its own session, so that stopping it reaches its worker processes too.
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.env},
        )
        try:
            self.wait_ready(args.startup_timeout)
        except Exception:
            self.stop()  # also drops the database
            raise

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        client = Client(self.port)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log_text()}")
            try:
                if client.call("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server not ready in {timeout} s: {self.log_text()}")

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read()[-4000:].decode(errors="replace")

    def rss_kib(self):
        return tree_rss_kib(self.proc.pid)

    def cpu_s(self):
        return tree_cpu_s(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()
        if self.db_name:
            psql(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")


def psql(sql):
    subprocess.run(["psql", ADMIN_URL, "-qc", sql], check=True)


def setup(port):
    """An experiment, two runs, a registered model with two versions and alias bench-get."""
    c = Client(port)
    exp = c.ok("POST", "/api/2.0/mlflow/experiments/create", {"name": "bench"})["experiment_id"]
    c.ok("POST", "/api/2.0/mlflow/registered-models/create", {"name": MODEL})
    for name in ("bench-a", "bench-b"):
        run = c.ok(
            "POST",
            "/api/2.0/mlflow/runs/create",
            {"experiment_id": exp, "run_name": name, "start_time": now_ms()},
        )["run"]["info"]
        put_artifact(c, run, "model/model.json", f"model of {name}".encode())
        c.ok(
            "POST",
            "/api/2.0/mlflow/model-versions/create",
            {
                "name": MODEL,
                "source": run["artifact_uri"] + "/model",
                "run_id": run["run_id"],
            },
        )
    c.ok(
        "POST",
        "/api/2.0/mlflow/registered-models/alias",
        {"name": MODEL, "alias": "bench-get", "version": "1"},
    )
    return exp


def now_ms():
    return int(time.time() * 1000)


def artifact_path(run, name):
    """The proxy path of a run's artifact (`mlflow-artifacts:/<exp>/<run>/artifacts`)."""
    uri = run["artifact_uri"]
    prefix = "mlflow-artifacts:"
    if not uri.startswith(prefix):
        raise RuntimeError(f"artifacts are not proxied: artifact_uri={uri}")
    return "/api/2.0/mlflow-artifacts/artifacts/" + uri[len(prefix):].lstrip("/") + "/" + name


def put_artifact(c, run, name, content):
    status, data = c.call(
        "PUT",
        artifact_path(run, name),
        body=content,
        headers={"Content-Type": "application/octet-stream"},
    )
    if status != 200:
        raise RuntimeError(f"artifact upload -> {status}: {data[:300]!r}")


def get_artifact(c, run, name):
    """Bytes received, read in 1 MiB pieces (not kept)."""
    if c.conn is None:
        c.conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=REQUEST_TIMEOUT)
    c.conn.request("GET", artifact_path(run, name))
    resp = c.conn.getresponse()
    got = 0
    while True:
        piece = resp.read(MIB)
        if not piece:
            break
        got += len(piece)
    if resp.status != 200:
        raise RuntimeError(f"artifact download -> {resp.status}")
    return got


def bench_artifacts(server, exp, mib, rounds):
    size = mib * MIB
    c = Client(server.port)
    base = os.urandom(size)
    rss_before = server.rss_kib()
    peak = [rss_before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], server.rss_kib())
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    up, down, runs = [], [], []
    up_cpu, down_cpu = [0.0, 0.0], [0.0, 0.0]

    def add_cpu(total, before):
        total[0] += server.cpu_s() - before[0]
        total[1] += self_cpu_s() - before[1]

    try:
        for r in range(rounds):
            content = (r + 1).to_bytes(8, "little") + base[8:]
            run = c.ok(
                "POST",
                "/api/2.0/mlflow/runs/create",
                {"experiment_id": exp, "run_name": f"artifact-{mib}-{r}", "start_time": now_ms()},
            )["run"]["info"]
            cpu0, t0 = (server.cpu_s(), self_cpu_s()), time.perf_counter()
            put_artifact(c, run, "model.bin", content)
            up.append(time.perf_counter() - t0)
            add_cpu(up_cpu, cpu0)
            runs.append(run)
        up_peak = peak[0]
        peak[0] = server.rss_kib()
        for run in runs:
            cpu0, t0 = (server.cpu_s(), self_cpu_s()), time.perf_counter()
            got = get_artifact(c, run, "model.bin")
            down.append(time.perf_counter() - t0)
            add_cpu(down_cpu, cpu0)
            if got != size:
                raise RuntimeError(f"downloaded {got} bytes of {size}")
        down_peak = peak[0]
    finally:
        stop.set()
        sampler.join()
    up_mbps = [size / 1e6 / t for t in up]
    down_mbps = [size / 1e6 / t for t in down]
    gb = size * rounds / 1e9
    result = {
        "size_mib": mib,
        "rounds": rounds,
        "upload_mb_s": median(up_mbps),
        "download_mb_s": median(down_mbps),
        "upload_mb_s_all": up_mbps,
        "download_mb_s_all": down_mbps,
        "rss_before_mib": rss_before / 1024,
        "upload_peak_rss_mib": up_peak / 1024,
        "download_peak_rss_mib": down_peak / 1024,
        "rss_growth_mib": max(up_peak, down_peak, rss_before) / 1024 - rss_before / 1024,
        "peak_is_per_phase": True,
        "peak_method": "process-tree VmRSS sampled every 20 ms",
        "upload_server_cpu_s_per_gb": up_cpu[0] / gb,
        "upload_client_cpu_s_per_gb": up_cpu[1] / gb,
        "download_server_cpu_s_per_gb": down_cpu[0] / gb,
        "download_client_cpu_s_per_gb": down_cpu[1] / gb,
    }
    log(
        f"artifact {mib} MiB: upload {result['upload_mb_s']:.0f} MB/s, download "
        f"{result['download_mb_s']:.0f} MB/s; tree RSS growth {result['rss_growth_mib']:.1f} MiB"
    )
    return result, max(up + down)


def median(v):
    s = sorted(v)
    n = len(s)
    if not n:
        return None
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def report(name, p):
    j = p.to_json()
    extra = f" (first: {p.first_error})" if p.first_error else ""
    p50, p99 = (float("nan") if v is None else v for v in (j["p50_us"], j["p99_us"]))
    log(
        f"{name:<16} c={p.concurrency:<3} {j['throughput_per_s']:>9.0f}/s  p50 {p50:>8.0f} µs"
        f"  p99 {p99:>8.0f} µs  errors {p.errors}{extra}"
    )
    return j


def idle_profile(args, backend, tmp, job_execution):
    """Idle RSS and CPU of a fresh server: (MiB, cores)."""
    server = MlflowServer(args, backend, tmp, job_execution)
    try:
        time.sleep(args.idle_secs)
        rss = server.rss_kib()
        cpu0 = server.cpu_s()
        time.sleep(args.idle_secs)
        return rss / 1024, (server.cpu_s() - cpu0) / args.idle_secs
    finally:
        server.stop()


def bench_backend(args, backend):
    with tempfile.TemporaryDirectory(prefix="mlflow-bench-") as tmp:
        defaults = None
        if args.job_execution == "off" and args.idle_with_defaults:
            os.makedirs(f"{tmp}/defaults")
            rss, cores = idle_profile(args, backend, f"{tmp}/defaults", True)
            defaults = {"idle_rss_mib": rss, "idle_cpu_cores": cores}
            log(f"MLflow defaults (job runner on), idle: RSS {rss:.0f} MiB, CPU {cores:.2f} cores")
        server = MlflowServer(args, backend, tmp, args.job_execution == "on")
        try:
            time.sleep(args.idle_secs)
            load_before = open("/proc/loadavg").read().strip()
            idle = server.rss_kib()
            cpu0 = server.cpu_s()
            time.sleep(args.idle_secs)
            idle_cores = (server.cpu_s() - cpu0) / args.idle_secs
            log(f"idle: RSS (process tree) {idle / 1024:.1f} MiB, CPU {idle_cores:.2f} cores")
            exp = setup(server.port)
            w, d = args.warmup_secs, args.duration_secs
            alias_path = f"/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias=bench-get"
            ops = {}

            def get_alias(c, _w, _i):
                c.ok("GET", alias_path)

            def set_alias(c, worker, i):
                c.ok(
                    "POST",
                    "/api/2.0/mlflow/registered-models/alias",
                    {"name": MODEL, "alias": f"bench-set-{worker}", "version": str(i % 2 + 1)},
                )

            def get_distinct(c, worker, _i):
                c.ok("GET", f"/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias=bench-set-{worker}")

            def lifecycle(c, worker, i):
                run = c.ok(
                    "POST",
                    "/api/2.0/mlflow/runs/create",
                    {
                        "experiment_id": exp,
                        "run_name": f"lifecycle-{worker}-{i}",
                        "start_time": now_ms(),
                    },
                )["run"]["info"]
                c.ok(
                    "POST",
                    "/api/2.0/mlflow/runs/update",
                    {"run_id": run["run_id"], "status": "FINISHED", "end_time": now_ms()},
                )

            # Every worker process imports its handlers lazily on first use: let each of
            # them serve each route before anything is measured.
            if args.prewarm_secs > 0:
                for op in (get_alias, set_alias, lifecycle):
                    load(server, 16, 0, args.prewarm_secs, op)

            for conc in args.get_alias_concurrency:
                ops[f"get_alias_c{conc}"] = report(
                    f"get_alias_c{conc}", load(server, conc, w, d, get_alias)
                )
            ops["set_alias_c16"] = report("set_alias_c16", load(server, 16, w, d, set_alias))
            ops["get_alias_distinct_c16"] = report(
                "get_alias_distinct_c16", load(server, 16, w, d, get_distinct)
            )
            ops["lifecycle_c16"] = report("lifecycle_c16", load(server, 16, w, d, lifecycle))

            artifacts = []
            for mib in args.artifact_mib:
                result, slowest = bench_artifacts(server, exp, mib, args.artifact_rounds)
                artifacts.append(result)
                # Larger sizes only while one transfer stays within the budget.
                if slowest * 4 > args.artifact_budget_secs:
                    log(f"skipping artifacts above {mib} MiB: one transfer took {slowest:.1f} s")
                    break
            time.sleep(1)
            rss_after = server.rss_kib()
            return {
                "idle_rss_mib": idle / 1024,
                "idle_cpu_cores": idle_cores,
                "with_default_settings": defaults,
                "server_env": server.env,
                "rss_after_mib": rss_after / 1024,
                "rss_method": "VmRSS summed over the mlflow server process tree",
                "loadavg_before": load_before,
                "server_command": shlex.join(server.cmd),
                "ops": ops,
                "artifacts": artifacts,
            }
        except Exception:
            log("mlflow server log tail:\n" + server.log_text())
            raise
        finally:
            server.stop()


def mlflow_version(mlflow):
    out = subprocess.run([mlflow, "--version"], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--out", default="docs/bench-mlflow.json")
    p.add_argument("--mlflow", default="mlflow", help="the mlflow executable")
    p.add_argument("--workers", type=int, default=4, help="mlflow server --workers")
    p.add_argument("--uvicorn-opts", default="--loop uvloop")
    p.add_argument("--duration-secs", type=float, default=5)
    p.add_argument("--warmup-secs", type=float, default=1)
    p.add_argument(
        "--get-alias-concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16, 64],
    )
    p.add_argument(
        "--artifact-mib", type=lambda s: [int(x) for x in s.split(",")], default=[16, 256]
    )
    p.add_argument("--artifact-rounds", type=int, default=3)
    p.add_argument(
        "--artifact-budget-secs",
        type=float,
        default=120,
        help="skip larger artifacts when 4x the slowest transfer exceeds this",
    )
    p.add_argument("--startup-timeout", type=float, default=180)
    p.add_argument(
        "--job-execution",
        choices=["on", "off"],
        default="off",
        help="MLflow's job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION); off for its best numbers",
    )
    p.add_argument(
        "--idle-with-defaults",
        type=int,
        default=1,
        help="1: also measure idle RSS/CPU of a server with MLflow's default settings",
    )
    p.add_argument(
        "--prewarm-secs",
        type=float,
        default=3,
        help="unmeasured load per operation (16 concurrent) before the phases",
    )
    p.add_argument("--idle-secs", type=float, default=3, help="settle, then measure idle CPU")
    args = p.parse_args()

    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = {}
    for b in backends:
        log(f"\n=== mlflow on {b} ===")
        results[b] = bench_backend(args, b)
    out = {
        "tool": "mlflow-bench",
        "mlflow_version": mlflow_version(args.mlflow),
        "python": platform.python_version(),
        "unix_time": int(time.time()),
        "settings": {
            "duration_secs": args.duration_secs,
            "warmup_secs": args.warmup_secs,
            "artifact_mib": args.artifact_mib,
            "artifact_rounds": args.artifact_rounds,
            "workers": args.workers,
            "uvicorn_opts": args.uvicorn_opts,
            "job_execution": args.job_execution,
            "prewarm_secs": args.prewarm_secs,
            "client": "Python threads, one keep-alive HTTP/1.1 connection per worker",
        },
        "backends": results,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2, allow_nan=False)
        f.write("\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
