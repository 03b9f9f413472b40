//! Graph provisioning benchmark for the release pipeline-svc binary (run by hand, not in CI).
//!
//! For each backend it starts `target/release/pipeline-svc` with auth on against a fresh
//! SQLite file or a fresh Postgres database and measures, one request at a time:
//! - DIRECT provisioning: from sending `ProvisionGraph` to receiving the terminal event of
//!   `WatchOperation` (p50, p99);
//! - QUEUED provisioning: the same through the durable job queue and a worker's claim;
//! - the server's RSS while holding idle `WatchOperation` streams (operations that stay
//!   queued on an API-only replica), and its CPU use while they idle.
//!
//! Prints a Markdown table and writes JSON. Traffic goes to 127.0.0.1 only.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use capstan_client::{connect, AuthedChannel};
use capstan_proto::pipeline::v1 as pb;
use capstan_server::{
    auth::{issue_hs256, Role},
    testing::{self, TestDb},
};
use capstan_tests::{binary, server_flags, Service};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

type Provisioning = pb::provisioning_service_client::ProvisioningServiceClient<AuthedChannel>;
type Operations = pb::operations_service_client::OperationsServiceClient<AuthedChannel>;

#[derive(Parser)]
#[command(about = "Capstan provisioning benchmark (release build, loopback only)")]
struct Args {
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendChoice,
    /// Measured provisionings per mode.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Unmeasured provisionings before each mode.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Idle WatchOperation streams to hold.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// How long the streams idle before RSS and CPU are read.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    #[arg(long, default_value = "docs/bench-provisioning.json")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

struct Stats {
    samples_ms: Vec<f64>,
}

impl Stats {
    fn new(mut samples_ms: Vec<f64>) -> Stats {
        samples_ms.sort_by(f64::total_cmp);
        Stats { samples_ms }
    }

    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> f64 {
        let n = self.samples_ms.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
        self.samples_ms[rank.min(n) - 1]
    }

    fn json(&self) -> Value {
        let n = self.samples_ms.len();
        let mean = self.samples_ms.iter().sum::<f64>() / n.max(1) as f64;
        json!({
            "n": n,
            "p50_ms": round(self.percentile(50.0)),
            "p90_ms": round(self.percentile(90.0)),
            "p99_ms": round(self.percentile(99.0)),
            "mean_ms": round(mean),
            "min_ms": round(self.samples_ms.first().copied().unwrap_or(f64::NAN)),
            "max_ms": round(self.samples_ms.last().copied().unwrap_or(f64::NAN)),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A field of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU seconds of a process.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

struct Bench {
    server: Service,
    token: String,
}

impl Bench {
    fn start(db_url: &str, dir: &Path, secret: &Path, extra: &[&str]) -> anyhow::Result<Service> {
        std::fs::create_dir_all(dir)?;
        let mut args = server_flags(dir, db_url, secret)?;
        args.extend_from_slice(extra);
        Service::start(
            &binary("pipeline-svc"),
            &args,
            &[("RUST_LOG", "warn,capstan_server::serve=info")],
            dir.join(format!("pipeline-{}.log", extra.len())),
        )
    }

    async fn provisioning(&self) -> anyhow::Result<Provisioning> {
        Ok(Provisioning::new(
            connect(&self.server.url(), Some(&self.token)).await?,
        ))
    }

    async fn operations(&self) -> anyhow::Result<Operations> {
        Ok(Operations::new(
            connect(&self.server.url(), Some(&self.token)).await?,
        ))
    }
}

fn graph() -> pb::GraphSpec {
    pb::GraphSpec {
        name: "bench".into(),
        schema: Some(pb::graph_spec::Schema::Extensions(pb::ExtensionsSchema {
            extensions: vec!["social".into()],
        })),
    }
}

/// Provisions once and follows it to its terminal event; returns the elapsed time.
async fn provision_once(
    p: &mut Provisioning,
    o: &mut Operations,
    mode: pb::ExecutionMode,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let op = p
        .provision_graph(pb::ProvisionGraphRequest {
            request_id: String::new(),
            graph: Some(graph()),
            plan: String::new(),
            execution_mode: mode as i32,
            timeout: None,
        })
        .await?
        .into_inner();
    let mut stream = o
        .watch_operation(pb::WatchOperationRequest {
            operation_id: op.operation_id.clone(),
            after_sequence: 0,
        })
        .await?
        .into_inner();
    while let Some(e) = stream.message().await? {
        if e.r#type == pb::OperationEventType::Finished as i32 {
            let elapsed = started.elapsed();
            ensure!(
                e.status == pb::OperationStatus::Succeeded as i32,
                "operation {} ended {}: {}",
                op.operation_id,
                e.status,
                e.message
            );
            return Ok(elapsed);
        }
    }
    bail!(
        "watch of {} ended without a terminal event",
        op.operation_id
    )
}

async fn latency(bench: &Bench, mode: pb::ExecutionMode, args: &Args) -> anyhow::Result<Stats> {
    let mut p = bench.provisioning().await?;
    let mut o = bench.operations().await?;
    for _ in 0..args.warmup {
        provision_once(&mut p, &mut o, mode).await?;
    }
    let mut samples = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        samples.push(provision_once(&mut p, &mut o, mode).await?.as_secs_f64() * 1e3);
    }
    Ok(Stats::new(samples))
}

/// Holds `n` idle watch streams on queued operations nobody claims.
async fn idle_watchers(bench: &Bench, args: &Args) -> anyhow::Result<Value> {
    let pid = bench.server.pid();
    let mut p = bench.provisioning().await?;
    let mut ids = Vec::with_capacity(args.watchers);
    for _ in 0..args.watchers {
        let op = p
            .provision_graph(pb::ProvisionGraphRequest {
                graph: Some(graph()),
                execution_mode: pb::ExecutionMode::Queued as i32,
                ..Default::default()
            })
            .await?
            .into_inner();
        ids.push(op.operation_id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = status_kib(pid, "VmRSS")?;
    // A few connections, as many clients would use; each well under the stream limit.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(bench.operations().await?);
    }
    let mut streams = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let n = clients.len();
        let mut stream = clients[i % n]
            .watch_operation(pb::WatchOperationRequest {
                operation_id: id.clone(),
                after_sequence: 0,
            })
            .await?
            .into_inner();
        // The replayed CREATED event: the stream is established and now idles.
        let first = stream.message().await?.context("watch stream ended")?;
        ensure!(first.sequence == 1, "unexpected first event {first:?}");
        streams.push(stream);
    }
    let rss_open = status_kib(pid, "VmRSS")?;
    let cpu_start = cpu_secs(pid)?;
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let cpu_idle = cpu_secs(pid)? - cpu_start;
    let rss_idle = status_kib(pid, "VmRSS")?;
    let hwm = status_kib(pid, "VmHWM")?;
    let open = streams.len();
    drop(streams);
    Ok(json!({
        "streams": open,
        "rss_before_mib": round(rss_before as f64 / 1024.0),
        "rss_streams_open_mib": round(rss_open as f64 / 1024.0),
        "rss_after_idle_mib": round(rss_idle as f64 / 1024.0),
        "rss_peak_mib": round(hwm as f64 / 1024.0),
        "per_stream_kib": round((rss_idle.saturating_sub(rss_before)) as f64 / open.max(1) as f64),
        "idle_secs": args.idle_secs,
        "idle_cpu_percent": round(100.0 * cpu_idle / args.idle_secs as f64),
    }))
}

async fn run_backend(name: &str, db_url: &str, dir: &Path, args: &Args) -> anyhow::Result<Value> {
    let (secret_path, secret) = testing::jwt_secret(dir);
    let token = issue_hs256(&secret, "bench-user", Role::User, 24 * 3600)?;
    let server = Bench::start(db_url, &dir.join("server"), &secret_path, &[])?;
    let mut bench = Bench { server, token };
    eprintln!("{name}: direct provisioning ×{}", args.iterations);
    let direct = latency(&bench, pb::ExecutionMode::Direct, args).await?;
    eprintln!("{name}: queued provisioning ×{}", args.iterations);
    let queued = latency(&bench, pb::ExecutionMode::Queued, args).await?;
    bench.server.terminate(Duration::from_secs(30))?;
    // An API-only replica with queueing on: its operations wait, so their watches idle.
    bench.server = Bench::start(
        db_url,
        &dir.join("idle"),
        &secret_path,
        &["--direct-execution", "false", "--queue-workers", "false"],
    )?;
    eprintln!("{name}: {} idle watch streams", args.watchers);
    let watch = idle_watchers(&bench, args).await?;
    bench.server.terminate(Duration::from_secs(30))?;
    Ok(json!({
        "direct": direct.json(),
        "queued": queued.json(),
        "idle_watch": watch,
    }))
}

fn table(results: &Value) -> String {
    let mut out = String::from(
        "| backend | path | n | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    let Some(backends) = results["backends"].as_object() else {
        return out;
    };
    for (name, r) in backends {
        for path in ["direct", "queued"] {
            let s = &r[path];
            out.push_str(&format!(
                "| {name} | {path} | {} | {} | {} | {} | {} |\n",
                s["n"], s["p50_ms"], s["p90_ms"], s["p99_ms"], s["mean_ms"]
            ));
        }
    }
    out.push_str(
        "\n| backend | idle streams | RSS before MiB | RSS with streams MiB | peak MiB | KiB/stream | idle CPU % |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, r) in backends {
        let w = &r["idle_watch"];
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            w["streams"],
            w["rss_before_mib"],
            w["rss_after_idle_mib"],
            w["rss_peak_mib"],
            w["per_stream_kib"],
            w["idle_cpu_percent"]
        ));
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let mut backends = serde_json::Map::new();
    if args.backend != BackendChoice::Postgres {
        let dir = work.path().join("sqlite");
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite://{}?mode=rwc", dir.join("pipeline.db").display());
        backends.insert(
            "sqlite".into(),
            run_backend("sqlite", &url, &dir, &args).await?,
        );
    }
    if args.backend != BackendChoice::Sqlite {
        let db: TestDb = TestDb::postgres().await;
        let dir = work.path().join("postgres");
        std::fs::create_dir_all(&dir)?;
        backends.insert(
            "postgres".into(),
            run_backend("postgres", &db.url, &dir, &args).await?,
        );
    }
    let results = json!({
        "benchmark": "graph provisioning (pipeline-svc release build)",
        "iterations": args.iterations,
        "warmup": args.warmup,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "schema": "extensions [social]: 2 node and 2 relationship tables",
        "backends": backends,
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)?;
    println!("{}", table(&results));
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
