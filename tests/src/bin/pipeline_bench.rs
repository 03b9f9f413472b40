//! Pipeline benchmark (issue 3, "Must show 5"), run by hand on a release build, never in
//! CI. For each backend it starts the release `registry-svc` (SQLite) and `pipeline-svc`
//! binaries with auth on and measures, over gRPC on loopback:
//!
//! - `showcase_rich` wall time with the default parameters (RunDemo → terminal event);
//! - StartDemo → first event (StartDemo, then WatchOperation from 0), and RunDemo → first
//!   event;
//! - QUEUED enqueue-to-start: the CREATED → STARTED gap of the stored events (server
//!   clocks) and StartDemo → STARTED received by a watcher (client side); on Postgres
//!   with two replicas, so the job may be claimed by the other process;
//!
//! and, in process through the engine library, an operation of N no-op durable steps
//! (every step start and end is a committed event) against Dagster's in-process run of an
//! N-step linear job, measured by `tests/bench/dagster_bench.py` in the same session.
//! Writes JSON, and with `--docs` the "Pipeline" section of docs/benchmarks.md (between
//! its markers; the rest of the file is left alone).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use capstan_proto::pipeline::v1 as pb;
use capstan_server::testing::TestDb;
use capstan_tests::{
    binary,
    report::{splice, utc, write_results, PIPELINE_BEGIN as BEGIN, PIPELINE_END as END},
    stack::PipelineStack,
    stats::{load_average, ms, Samples},
};
use clap::{Parser, ValueEnum};
use pipeline_svc::{
    domain::{
        engine::{
            operation::{EventType, ExecutionMode, OpStatus},
            workflow::Workflows,
            Engine, EngineConfig, StartOperation,
        },
        noop::{self, Noop, NoopParams},
    },
    store::sql::SqlStore,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Capstan pipeline benchmark (release build, loopback only)")]
struct Args {
    /// Which store pipeline-svc runs on (the registry always uses SQLite).
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendChoice,
    /// Where the JSON results go.
    #[arg(long, default_value = "docs/bench-pipeline.json")]
    out: PathBuf,
    /// Measured showcase_rich runs with the default parameters (after one warm-up run).
    #[arg(long, default_value_t = 10)]
    showcase_runs: usize,
    /// Measured StartDemo → first event samples.
    #[arg(long, default_value_t = 50)]
    first_event_runs: usize,
    /// Measured QUEUED enqueue-to-start samples.
    #[arg(long, default_value_t = 200)]
    queued_runs: usize,
    /// Measured no-op operations.
    #[arg(long, default_value_t = 100)]
    noop_runs: usize,
    /// Steps of each no-op operation (and of the Dagster job).
    #[arg(long, default_value_t = 20)]
    noop_steps: usize,
    /// Results of tests/bench/dagster_bench.py from the same session, for the ratio.
    #[arg(long)]
    dagster: Option<PathBuf>,
    /// Markdown file whose pipeline section (between the markers) is written.
    #[arg(long)]
    docs: Option<PathBuf>,
    /// How this run was started (printed under "Reproduce").
    #[arg(long, default_value = "tests/bench/run_pipeline.sh")]
    commands: String,
    /// Measure nothing: write the `--docs` section from this earlier `--out` JSON.
    #[arg(long, requires = "docs")]
    from_json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

/// Targets of issue 3 on 2 cores, in milliseconds.
const SHOWCASE_TARGET_MS: f64 = 2000.0;
const FIRST_EVENT_TARGET_MS: f64 = 5.0;
const NOOP_TARGET_MS: f64 = 25.0;
const QUEUED_P50_TARGET_MS: f64 = 50.0;
/// Bounds every wait for an operation.
const OP_LIMIT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.showcase_runs > 0
            && args.first_event_runs > 0
            && args.queued_runs > 0
            && args.noop_runs > 0,
        "every --*-runs must be positive"
    );
    ensure!(
        (1..=200).contains(&args.noop_steps),
        "--noop-steps must be 1-200"
    );
    if let (Some(json), Some(docs)) = (&args.from_json, &args.docs) {
        let out: Value = serde_json::from_str(
            &std::fs::read_to_string(json)
                .with_context(|| format!("cannot read {}", json.display()))?,
        )
        .with_context(|| format!("{} is not JSON", json.display()))?;
        splice(docs, &markdown(&out, &args.commands))?;
        eprintln!("wrote the pipeline section of {}", docs.display());
        return Ok(());
    }
    let registry_bin = binary("registry-svc");
    let pipeline_bin = binary("pipeline-svc");
    for b in [&registry_bin, &pipeline_bin] {
        if !b.to_string_lossy().contains("/release/") {
            eprintln!("WARNING: {} is not a release build", b.display());
        }
    }
    let dagster = match &args.dagster {
        Some(p) => Some(
            serde_json::from_str::<Value>(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("{} is not JSON", p.display()))?,
        ),
        None => None,
    };

    let backends: &[&str] = match args.backend {
        BackendChoice::Sqlite => &["sqlite"],
        BackendChoice::Postgres => &["postgres"],
        BackendChoice::Both => &["sqlite", "postgres"],
    };
    let mut results = serde_json::Map::new();
    for &backend in backends {
        eprintln!("\n=== {backend} ===");
        let result = bench_backend(&args, backend, &registry_bin, &pipeline_bin).await?;
        results.insert(backend.to_string(), result);
    }
    let out = json!({
        "tool": "capstan-pipeline-bench",
        "capstan_version": env!("CARGO_PKG_VERSION"),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "host": host_info(),
        "commit": git_commit(),
        "settings": {
            "showcase_runs": args.showcase_runs,
            "first_event_runs": args.first_event_runs,
            "queued_runs": args.queued_runs,
            "noop_runs": args.noop_runs,
            "noop_steps": args.noop_steps,
            "pipeline_binary": pipeline_bin.display().to_string(),
        },
        "backends": results,
        "dagster": dagster,
    });
    write_results(&args.out, &out)?;
    if let Some(docs) = &args.docs {
        let section = markdown(&out, &args.commands);
        splice(docs, &section)?;
        eprintln!("wrote the pipeline section of {}", docs.display());
    }
    Ok(())
}

fn micros(t: Option<&prost_types::Timestamp>) -> anyhow::Result<i64> {
    let t = t.context("event without a time")?;
    Ok(t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
}

fn small_demo(mode: pb::ExecutionMode) -> pb::StartDemoRequest {
    // Enough history for the three backtest folds; the latencies measured with it do not
    // depend on the workflow's size.
    pb::StartDemoRequest {
        scenario: "showcase_rich".into(),
        series_count: 4,
        days: 200,
        horizon: 14,
        execution_mode: mode as i32,
        ..Default::default()
    }
}

/// Reads `stream` to its end; returns the events (heartbeats dropped) with the instant
/// the first arrived.
async fn drain(
    mut stream: tonic::Streaming<pb::OperationEvent>,
) -> anyhow::Result<(Vec<pb::OperationEvent>, Option<Instant>)> {
    let mut events = Vec::new();
    let mut first = None;
    let deadline = tokio::time::Instant::now() + OP_LIMIT;
    while let Some(e) = tokio::time::timeout_at(deadline, stream.message())
        .await
        .context("the operation did not finish in time")??
    {
        first.get_or_insert_with(Instant::now);
        if e.r#type != pb::OperationEventType::Heartbeat as i32 {
            events.push(e);
        }
    }
    Ok((events, first))
}

fn expect_succeeded(events: &[pb::OperationEvent]) -> anyhow::Result<()> {
    match events.last() {
        Some(e) if e.status == pb::OperationStatus::Succeeded as i32 => Ok(()),
        Some(e) => bail!("operation {} ended: {}", e.operation_id, e.message),
        None => bail!("no events"),
    }
}

fn event_of(events: &[pb::OperationEvent], t: pb::OperationEventType) -> anyhow::Result<usize> {
    events
        .iter()
        .position(|e| e.r#type == t as i32)
        .with_context(|| format!("no {} event", t.as_str_name()))
}

// ---- phases --------------------------------------------------------------------------

async fn bench_backend(
    args: &Args,
    backend: &str,
    registry_bin: &Path,
    pipeline_bin: &Path,
) -> anyhow::Result<Value> {
    let db = match backend {
        "sqlite" => TestDb::sqlite(),
        _ => TestDb::postgres().await,
    };
    // Two replicas on Postgres: queued jobs may be claimed by either process.
    let replicas = if backend == "postgres" { 2 } else { 1 };
    let servers = PipelineStack::start(registry_bin, pipeline_bin, &db, None, replicas).await?;
    let (mut pipe, mut ops) = servers.clients(0).await?;
    let load_before = load_average();
    eprintln!("load average before: {load_before}");

    // showcase_rich, default parameters, DIRECT (the default).
    let mut wall = Vec::new();
    let mut server_side = Vec::new();
    let mut run_first = Vec::new();
    for i in 0..=args.showcase_runs {
        let request = pb::RunDemoRequest {
            demo: Some(pb::StartDemoRequest {
                scenario: "showcase_rich".into(),
                ..Default::default()
            }),
        };
        let t0 = Instant::now();
        let stream = pipe.run_demo(request).await?.into_inner();
        let (events, first) = drain(stream).await?;
        let elapsed = t0.elapsed();
        expect_succeeded(&events)?;
        if i == 0 {
            continue; // warm-up: first connections, page cache
        }
        wall.push(ms(elapsed));
        run_first.push(ms(first.context("no event")? - t0));
        let created = &events[event_of(&events, pb::OperationEventType::Created)?];
        let end = events.last().context("no events")?;
        server_side
            .push((micros(end.time.as_ref())? - micros(created.time.as_ref())?) as f64 / 1e3);
    }
    let wall = Samples::new(wall);
    wall.line("showcase_rich wall time (RunDemo → end)");
    let server_side = Samples::new(server_side);
    server_side.line("showcase_rich CREATED → FINISHED (server)");
    let run_first = Samples::new(run_first);
    run_first.line("RunDemo → first event");

    // StartDemo → first event, DIRECT.
    let mut start_first = Vec::new();
    let mut start_rpc = Vec::new();
    for i in 0..=args.first_event_runs {
        let t0 = Instant::now();
        let op = pipe
            .start_demo(small_demo(pb::ExecutionMode::Direct))
            .await?
            .into_inner();
        let t_rpc = t0.elapsed();
        let stream = ops
            .watch_operation(pb::WatchOperationRequest {
                operation_id: op.operation_id,
                after_sequence: 0,
            })
            .await?
            .into_inner();
        let (events, first) = drain(stream).await?;
        expect_succeeded(&events)?;
        if i > 0 {
            start_first.push(ms(first.context("no event")? - t0));
            start_rpc.push(ms(t_rpc));
        }
    }
    let start_first = Samples::new(start_first);
    start_first.line("StartDemo → first event (WatchOperation)");
    let start_rpc = Samples::new(start_rpc);
    start_rpc.line("StartDemo reply");

    // QUEUED enqueue-to-start, one operation at a time.
    let mut queued_server = Vec::new();
    let mut queued_client = Vec::new();
    let mut claimed_elsewhere = 0;
    for i in 0..=args.queued_runs {
        let t0 = Instant::now();
        let op = pipe
            .start_demo(small_demo(pb::ExecutionMode::Queued))
            .await?
            .into_inner();
        ensure!(op.execution_mode == pb::ExecutionMode::Queued as i32);
        let mut stream = ops
            .watch_operation(pb::WatchOperationRequest {
                operation_id: op.operation_id,
                after_sequence: 0,
            })
            .await?
            .into_inner();
        let mut started_at = None;
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + OP_LIMIT;
        while let Some(e) = tokio::time::timeout_at(deadline, stream.message())
            .await
            .context("the queued operation did not finish in time")??
        {
            if e.r#type == pb::OperationEventType::Started as i32 && started_at.is_none() {
                started_at = Some(t0.elapsed());
            }
            if e.r#type != pb::OperationEventType::Heartbeat as i32 {
                events.push(e);
            }
        }
        expect_succeeded(&events)?;
        if i == 0 {
            continue;
        }
        let created = &events[event_of(&events, pb::OperationEventType::Created)?];
        let started = &events[event_of(&events, pb::OperationEventType::Started)?];
        queued_server
            .push((micros(started.time.as_ref())? - micros(created.time.as_ref())?) as f64 / 1e3);
        queued_client.push(ms(started_at.context("no STARTED event")?));
        claimed_elsewhere += usize::from(!started.message.contains("bench-0"));
    }
    let queued_server = Samples::new(queued_server);
    queued_server.line("QUEUED enqueue → start (CREATED → STARTED)");
    let queued_client = Samples::new(queued_client);
    queued_client.line("QUEUED StartDemo → STARTED received");
    eprintln!(
        "queued operations claimed by the other replica: {claimed_elsewhere} of {}",
        args.queued_runs
    );
    let load_after = load_average();
    drop(servers);

    let noop = bench_noop(args, backend).await?;

    Ok(json!({
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "pipeline_replicas": replicas,
        "showcase_rich_wall": wall.to_json(),
        "showcase_rich_server": server_side.to_json(),
        "run_demo_first_event": run_first.to_json(),
        "start_demo_first_event": start_first.to_json(),
        "start_demo_reply": start_rpc.to_json(),
        "queued_enqueue_to_start_server": queued_server.to_json(),
        "queued_enqueue_to_start_client": queued_client.to_json(),
        "queued_claimed_by_other_replica": claimed_elsewhere,
        "noop": noop,
    }))
}

// ---- no-op durable steps, in process ---------------------------------------------------

/// Start → terminal event received by a watcher, DIRECT, on a fresh store.
async fn bench_noop(args: &Args, backend: &str) -> anyhow::Result<Value> {
    let db = match backend {
        "sqlite" => TestDb::sqlite(),
        _ => TestDb::postgres().await,
    };
    let store = SqlStore::connect(&db.url, "bench-noop").await?;
    let shutdown = CancellationToken::new();
    let engine = Engine::new(
        Arc::new(store),
        EngineConfig {
            replica_id: "bench-noop".into(),
            default_mode: ExecutionMode::Direct,
            ..Default::default()
        },
        Workflows::new([Noop::new() as _])?,
        shutdown.clone(),
    );
    engine.spawn_background();
    let mut wall = Vec::new();
    let mut server = Vec::new();
    let load_before = load_average();
    for i in 0..args.noop_runs + 3 {
        let t0 = Instant::now();
        let op = engine
            .start(
                "bench",
                StartOperation {
                    kind: noop::KIND.into(),
                    params: NoopParams::steps(args.noop_steps).to_json(),
                    request_id: None,
                    mode: Some(ExecutionMode::Direct),
                    timeout: None,
                },
            )
            .await?;
        let mut rx = engine.watch(op.id, None, 0).await?;
        let (mut created, mut finished) = (None, None);
        while let Some(e) = tokio::time::timeout(OP_LIMIT, rx.recv())
            .await
            .context("the no-op operation did not finish in time")?
        {
            match e.kind {
                EventType::Created => created = Some(e.time),
                EventType::Finished => {
                    ensure!(e.status == OpStatus::Succeeded, "{}", e.message);
                    finished = Some(e.time);
                }
                _ => {}
            }
        }
        let elapsed = t0.elapsed();
        if i < 3 {
            continue; // warm-up: pool connections, statement caches
        }
        wall.push(ms(elapsed));
        let (c, f) = (
            created.context("no CREATED")?,
            finished.context("no FINISHED")?,
        );
        server.push((f - c) as f64 / 1e3);
    }
    shutdown.cancel();
    engine.drained().await;
    let wall = Samples::new(wall);
    wall.line(&format!(
        "{} no-op durable steps (start → end)",
        args.noop_steps
    ));
    let server = Samples::new(server);
    server.line(&format!(
        "{} no-op durable steps CREATED → FINISHED",
        args.noop_steps
    ));
    Ok(json!({
        "steps": args.noop_steps,
        "loadavg_before": load_before,
        "wall": wall.to_json(),
        "server": server.to_json(),
    }))
}

// ---- report --------------------------------------------------------------------------

fn host_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name")?
            .split_once(':')
            .map(|(_, m)| m.trim().to_string())
    });
    json!({
        "cpu_model": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
    })
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "—".into(),
    }
}

fn verdict(value: Option<f64>, target: f64) -> &'static str {
    match value {
        Some(v) if v < target => "PASS",
        Some(_) => "**FAIL**",
        None => "not measured",
    }
}

/// The "Pipeline" section, markers included.
fn markdown(out: &Value, commands: &str) -> String {
    let mut l = vec![BEGIN.to_string(), "## Pipeline".into(), String::new()];
    let host = &out["host"];
    l.push(format!(
        "Run by hand, never in CI (`{commands}`): release builds of `registry-svc` (SQLite) and \
         `pipeline-svc` at commit `{}`, started by `tests/src/bin/pipeline_bench.rs` and driven \
         over gRPC on loopback with authentication on; the no-op steps run in process through \
         the engine library. {} ({} cores), Linux {}, {}. Client and servers share the cores, \
         and other work may run on the machine: each block gives the load average (1, 5, \
         15 min) before → after it.",
        out["commit"].as_str().unwrap_or("?"),
        host["cpu_model"].as_str().unwrap_or("?"),
        host["cores"],
        host["kernel"].as_str().unwrap_or("?"),
        utc(out["unix_time"].as_u64().unwrap_or(0)),
    ));
    l.push(String::new());
    let backends = &out["backends"];
    let noop_steps = out["settings"]["noop_steps"].as_u64().unwrap_or(20);

    l.push("### Targets (2 cores)".into());
    l.push(String::new());
    l.push("| target | backend | measured | result |".into());
    l.push("|---|---|---:|---|".into());
    let mut row = |label: &str, backend: &str, v: &Value, target: f64| {
        l.push(format!(
            "| {label} < {target} ms | {backend} | {} ms | {} |",
            f(v),
            verdict(v.as_f64(), target)
        ));
    };
    let sqlite = &backends["sqlite"];
    row(
        "showcase_rich, default parameters, wall time p50",
        "sqlite",
        &sqlite["showcase_rich_wall"]["p50_ms"],
        SHOWCASE_TARGET_MS,
    );
    row(
        "StartDemo → first event p50",
        "sqlite",
        &sqlite["start_demo_first_event"]["p50_ms"],
        FIRST_EVENT_TARGET_MS,
    );
    row(
        &format!("{noop_steps} no-op durable steps p50"),
        "sqlite",
        &sqlite["noop"]["wall"]["p50_ms"],
        NOOP_TARGET_MS,
    );
    for name in ["sqlite", "postgres"] {
        if backends.get(name).is_some() {
            row(
                "QUEUED enqueue-to-start p50",
                name,
                &backends[name]["queued_enqueue_to_start_server"]["p50_ms"],
                QUEUED_P50_TARGET_MS,
            );
        }
    }
    l.push(String::new());

    for (name, title) in [("sqlite", "SQLite"), ("postgres", "PostgreSQL")] {
        let b = &backends[name];
        if b.is_null() {
            continue;
        }
        l.push(format!(
            "### {title} ({} pipeline-svc replica{}; load average {} → {})",
            b["pipeline_replicas"],
            if b["pipeline_replicas"] == 1 { "" } else { "s" },
            b["loadavg_before"].as_str().unwrap_or("?"),
            b["loadavg_after"].as_str().unwrap_or("?"),
        ));
        l.push(String::new());
        l.push("| measurement | n | p50 ms | p99 ms | min ms | max ms |".into());
        l.push("|---|---:|---:|---:|---:|---:|".into());
        for (label, key) in [
            (
                "showcase_rich, default parameters: RunDemo → terminal event",
                &b["showcase_rich_wall"],
            ),
            (
                "showcase_rich: CREATED → FINISHED (server clocks)",
                &b["showcase_rich_server"],
            ),
            ("RunDemo → first event", &b["run_demo_first_event"]),
            (
                "StartDemo → first event (then WatchOperation from 0)",
                &b["start_demo_first_event"],
            ),
            ("StartDemo reply", &b["start_demo_reply"]),
            (
                "QUEUED enqueue-to-start: CREATED → STARTED (server clocks)",
                &b["queued_enqueue_to_start_server"],
            ),
            (
                "QUEUED: StartDemo → STARTED received by a watcher",
                &b["queued_enqueue_to_start_client"],
            ),
            (
                &*format!("{noop_steps} no-op durable steps: start → terminal event watched"),
                &b["noop"]["wall"],
            ),
            (
                &*format!("{noop_steps} no-op durable steps: CREATED → FINISHED (server clocks)"),
                &b["noop"]["server"],
            ),
        ] {
            l.push(format!(
                "| {label} | {} | {} | {} | {} | {} |",
                key["n"],
                f(&key["p50_ms"]),
                f(&key["p99_ms"]),
                f(&key["min_ms"]),
                f(&key["max_ms"])
            ));
        }
        l.push(String::new());
        if b["pipeline_replicas"].as_u64() > Some(1) {
            l.push(format!(
                "Queued operations are started one at a time; {} of {} were claimed by the \
                 replica that did not receive the request (woken by Postgres NOTIFY), the \
                 others by the receiving replica's own worker.",
                b["queued_claimed_by_other_replica"], b["queued_enqueue_to_start_server"]["n"]
            ));
        } else {
            l.push(
                "Queued operations are started one at a time and claimed by the replica's own \
                 worker (SQLite serves one replica)."
                    .into(),
            );
        }
        l.push(String::new());
    }

    l.push(format!(
        "### Peer: a {noop_steps}-step linear job in Dagster (same session)"
    ));
    l.push(String::new());
    let dagster = &out["dagster"];
    if dagster.is_null() {
        l.push("Not measured in this run (`--dagster` not given).".into());
    } else {
        l.push(format!(
            "Dagster {} on Python {}: `execute_in_process` of a job of {} chained no-op ops, \
             {} runs after {} warm-up runs each way (`tests/bench/dagster_bench.py`; load \
             average {} before). Ephemeral: a new in-memory instance per run, as \
             `execute_in_process()` does by default. SQLite: one `DagsterInstance.local_temp()` \
             (Dagster's default local instance: SQLite run and event storage). Both with values \
             passed in memory, console logging at ERROR and telemetry off. Capstan: the engine \
             running an operation of {noop_steps} no-op steps, each start and end a committed \
             event, from the start call to the terminal event received by a watcher. Dagster's \
             SQLite storage keeps SQLite's defaults (rollback journal, a sync to disk per \
             commit, an event-log database per run); Capstan's SQLite store runs WAL with \
             `synchronous=NORMAL` (commits survive a crash of the process; a power cut may lose \
             the last ones, never corrupting the file). The SQLite-instance ratio includes that \
             difference, so it depends heavily on the disk and on what else writes to it.",
            dagster["dagster_version"].as_str().unwrap_or("?"),
            dagster["python"].as_str().unwrap_or("?"),
            dagster["steps"],
            dagster["runs"]["ephemeral"]["n"],
            dagster["warmup"],
            dagster["loadavg_before"].as_str().unwrap_or("?"),
        ));
        l.push(String::new());
        l.push("| run | Dagster p50 ms | Capstan p50 ms | Capstan faster by |".into());
        l.push("|---|---:|---:|---:|".into());
        for (label, key) in [
            ("in-memory (ephemeral) instance", "ephemeral"),
            ("SQLite instance (durable run and event storage)", "sqlite"),
        ] {
            let d = &dagster["runs"][key]["p50_ms"];
            for name in ["sqlite", "postgres"] {
                let c = &backends[name]["noop"]["wall"]["p50_ms"];
                if c.is_null() {
                    continue;
                }
                let ratio = match (d.as_f64(), c.as_f64()) {
                    (Some(d), Some(c)) if c > 0.0 && d / c >= 10.0 => format!("{:.0}×", d / c),
                    (Some(d), Some(c)) if c > 0.0 => format!("{:.1}×", d / c),
                    _ => "—".into(),
                };
                l.push(format!(
                    "| Dagster {label} vs Capstan on {name} | {} | {} | {ratio} |",
                    f(d),
                    f(c)
                ));
            }
        }
    }
    l.push(String::new());
    l.push("### Reproduce".into());
    l.push(String::new());
    l.push("```sh".into());
    l.push("# everything: release build, Dagster venv if missing, Capstan on both backends, this section".into());
    l.push(commands.to_string());
    l.push(String::new());
    l.push("# or step by step".into());
    l.push("cargo build --release -p registry-svc -p pipeline-svc -p capstan-tests --bin registry-svc --bin pipeline-svc --bin pipeline_bench".into());
    l.push("python3 -m venv /tmp/capstan-dagster-venv && /tmp/capstan-dagster-venv/bin/pip install dagster".into());
    l.push(format!(
        "/tmp/capstan-dagster-venv/bin/python tests/bench/dagster_bench.py --steps {noop_steps} --out docs/bench-dagster.json"
    ));
    l.push(format!(
        "${{CARGO_TARGET_DIR:-target}}/release/pipeline_bench --backend both --noop-steps {noop_steps} \
         --dagster docs/bench-dagster.json --out docs/bench-pipeline.json --docs docs/benchmarks.md"
    ));
    l.push("# this section again from the saved results, without measuring".into());
    l.push(
        "${CARGO_TARGET_DIR:-target}/release/pipeline_bench --from-json docs/bench-pipeline.json \
         --docs docs/benchmarks.md"
            .into(),
    );
    l.push("```".into());
    l.push(String::new());
    l.push(
        "Postgres must be reachable at 127.0.0.1:5432 as user `postgres` (or at \
         `CAPSTAN_TEST_POSTGRES_URL`); each run creates its own databases and drops them."
            .into(),
    );
    l.push(END.to_string());
    l.join("\n") + "\n"
}
