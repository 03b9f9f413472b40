//! Cancellation while a large demo trains (issue 12, "Must show 4"), run by hand on a
//! release build over loopback. For each backend it starts the release registry and two
//! pipeline replicas on fresh databases of that backend, then, `--tries` times for each
//! target replica:
//!
//! - starts a DIRECT `showcase_rich` demo of `--series` series over `--days` days on
//!   replica 0 and watches it until `train_and_backtest` has started, waits a little more
//!   (a different delay each try), and sends `CancelOperation` to replica 0 (the one that
//!   runs it) or to replica 1 (the other), alternately;
//! - times CancelOperation sent → the FINISHED event (status `CANCELLED`, compensations
//!   done) received by the watcher;
//! - meanwhile probes, one call after another, `GetOperation` on the replica that trains
//!   and `GetAlias` on the registry, and keeps their latencies.
//!
//! Writes JSON and prints a Markdown table.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use capstan_client::{registry_client, OperationsClient, RegistryClient};
use capstan_proto::{pipeline::v1 as pb, registry::v1 as rpb};
use capstan_server::{db::Backend, testing::TestDb};
use capstan_tests::{
    binary, report,
    stack::PipelineStack,
    stats::{load_average, ms, Samples},
    Backends,
};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "CancelOperation latency during a large demo's training (release build)")]
struct Args {
    #[arg(long, value_enum, default_value = "both")]
    backend: Backends,
    /// Cancellations per target replica (the one running the demo, the other one).
    #[arg(long, default_value_t = 20)]
    tries: usize,
    #[arg(long, default_value_t = 500)]
    series: i32,
    #[arg(long, default_value_t = 3660)]
    days: i32,
    #[arg(long, default_value = "docs/bench-cancel.json")]
    out: PathBuf,
}

const STEP: &str = "train_and_backtest";
/// Bounds every wait for an event.
const EVENT_LIMIT: Duration = Duration::from_secs(300);
/// Between two probe calls, so that the probes measure the server, not saturate it.
const PROBE_GAP: Duration = Duration::from_millis(5);

/// What one try saw: the cancel latency and the step that was running when it came.
struct Try {
    cancel_ms: f64,
    step: String,
}

/// Reads `stream` until an event passes `until` (heartbeats skipped); returns it.
async fn next_until(
    stream: &mut tonic::Streaming<pb::OperationEvent>,
    mut until: impl FnMut(&pb::OperationEvent) -> bool,
) -> anyhow::Result<pb::OperationEvent> {
    let deadline = tokio::time::Instant::now() + EVENT_LIMIT;
    loop {
        let e = tokio::time::timeout_at(deadline, stream.message())
            .await
            .context("no such event in time")??
            .context("the stream ended first")?;
        if until(&e) {
            return Ok(e);
        }
        if e.r#type == pb::OperationEventType::Finished as i32 {
            bail!("the operation finished first: {}", e.message);
        }
    }
}

/// Calls GetOperation and GetAlias one after another until `stop`; their latencies in ms.
async fn probe(
    mut ops: OperationsClient,
    mut registry: RegistryClient,
    operation_id: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut get_op, mut get_alias) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        ops.get_operation(pb::GetOperationRequest {
            operation_id: operation_id.clone(),
        })
        .await?;
        get_op.push(ms(t.elapsed()));
        let t = Instant::now();
        // NOT_FOUND before the first demo has set the alias is an answer too.
        match registry
            .get_alias(rpb::GetAliasRequest {
                alias: "demo-production".into(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
        get_alias.push(ms(t.elapsed()));
        tokio::time::sleep(PROBE_GAP).await;
    }
    Ok((get_op, get_alias))
}

async fn bench_backend(args: &Args, backend: Backend) -> anyhow::Result<Value> {
    let db = TestDb::new(backend).await;
    let registry_db = TestDb::new(backend).await;
    let stack = PipelineStack::start(
        &binary("registry-svc"),
        &binary("pipeline-svc"),
        &db,
        Some(&registry_db),
        2,
    )
    .await?;
    let (mut pipe, mut ops0) = stack.clients(0).await?;
    let (_, ops1) = stack.clients(1).await?;
    let registry = registry_client(&stack.registry.url(), Some(&stack.admin), 8 << 20).await?;
    let load_before = load_average();
    let mut tries: [Vec<Try>; 2] = [Vec::new(), Vec::new()];
    let (mut get_op, mut get_alias) = (Vec::new(), Vec::new());
    for i in 0..2 * args.tries {
        let target = i % 2;
        let op = pipe
            .start_demo(pb::StartDemoRequest {
                scenario: "showcase_rich".into(),
                series_count: args.series,
                days: args.days,
                execution_mode: pb::ExecutionMode::Direct as i32,
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut stream = ops0
            .watch_operation(pb::WatchOperationRequest {
                operation_id: op.operation_id.clone(),
                after_sequence: 0,
            })
            .await?
            .into_inner();
        next_until(&mut stream, |e| {
            e.r#type == pb::OperationEventType::StepStarted as i32 && e.step == STEP
        })
        .await
        .with_context(|| format!("try {i}: waiting for {STEP}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let probes = tokio::spawn(probe(
            ops0.clone(),
            registry.clone(),
            op.operation_id.clone(),
            stop.clone(),
        ));
        // 100-600 ms into the step, a different moment each try.
        tokio::time::sleep(Duration::from_millis(100 + (i as u64 * 137) % 500)).await;
        let mut to = if target == 0 {
            ops0.clone()
        } else {
            ops1.clone()
        };
        let t0 = Instant::now();
        to.cancel_operation(pb::CancelOperationRequest {
            operation_id: op.operation_id.clone(),
            reason: "cancel bench".into(),
        })
        .await?;
        let mut step = STEP.to_owned();
        let end = next_until(&mut stream, |e| {
            if e.r#type == pb::OperationEventType::StepStarted as i32 {
                step.clone_from(&e.step);
            }
            e.r#type == pb::OperationEventType::Finished as i32
        })
        .await?;
        let cancel_ms = ms(t0.elapsed());
        stop.store(true, Ordering::Relaxed);
        let (o, a) = probes.await??;
        get_op.extend(o);
        get_alias.extend(a);
        ensure!(
            end.status == pb::OperationStatus::Cancelled as i32,
            "try {i}: ended {:?}: {}",
            end.status(),
            end.message
        );
        eprintln!(
            "{backend:?} try {i}: cancel via replica {target} → CANCELLED in {cancel_ms:.1} ms (during {step})"
        );
        tries[target].push(Try { cancel_ms, step });
    }
    let summary = |t: &[Try]| {
        let s = Samples::new(t.iter().map(|t| t.cancel_ms).collect());
        let during_step = t.iter().filter(|t| t.step == STEP).count();
        let mut v = s.to_json();
        v["during_training"] = json!(during_step);
        v
    };
    Ok(json!({
        "backend": format!("{backend:?}").to_lowercase(),
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
        "cancel_same_replica": summary(&tries[0]),
        "cancel_other_replica": summary(&tries[1]),
        "get_operation_while_training": Samples::new(get_op).to_json(),
        "get_alias_while_training": Samples::new(get_alias).to_json(),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.tries > 0, "--tries must be positive");
    let backends = args.backend.list();
    let mut results = Vec::new();
    for backend in backends {
        results.push(bench_backend(&args, backend).await?);
    }
    let out = json!({
        "series": args.series,
        "days": args.days,
        "tries_per_target": args.tries,
        "backends": results,
    });
    report::write_results(&args.out, &out)?;
    println!("| backend | cancel → CANCELLED, same replica p50 / p99 | other replica p50 / p99 | GetOperation p99 while training | GetAlias p99 while training |");
    println!("|---|---:|---:|---:|---:|");
    for b in out["backends"].as_array().into_iter().flatten() {
        let f = |k: &str, p: &str| b[k][p].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {:.1} ms | {:.1} ms |",
            b["backend"].as_str().unwrap_or("?"),
            f("cancel_same_replica", "p50_ms"),
            f("cancel_same_replica", "p99_ms"),
            f("cancel_other_replica", "p50_ms"),
            f("cancel_other_replica", "p99_ms"),
            f("get_operation_while_training", "p99_ms"),
            f("get_alias_while_training", "p99_ms"),
        );
    }
    Ok(())
}
