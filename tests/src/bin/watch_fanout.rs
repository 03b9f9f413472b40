//! Idle-watcher benchmark (issue 14, "Must show 1"), run by hand on a release build over
//! loopback. For each service it starts the release binary on a fresh Postgres database
//! and, at each N of `--watchers`, opens N idle watch streams (`WatchAliases` on one
//! alias; `WatchOperation` on one queued operation of an API-only pipeline replica) and
//! reports:
//!
//! - the database's transactions a second while nothing happens (Postgres' own count over
//!   a window, after the statistics settled), against the same figure with no watcher;
//! - the server's RSS per idle stream (RSS with N streams minus RSS with none, over N);
//! - the time from one change (`SetAlias`; `CancelOperation`, whose event every watcher
//!   gets) to each of the N watchers receiving it: p50, p99 and the last.
//!
//! Writes JSON and an SVG of the p99 and of the transactions against N.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use capstan_client::{connect, registry_client, AuthedChannel};
use capstan_proto::{
    pipeline::v1::{self as ppb, operations_service_client::OperationsServiceClient},
    registry::v1 as rpb,
};
use capstan_server::{
    auth::{issue_hs256, Role},
    testing::{self, TestDb},
};
use capstan_tests::{
    binary, path_str, pipeline_registry,
    plot::{Chart, Series},
    report,
    runs::servable_run,
    server_flags,
    stats::Samples,
    Service,
};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(about = "What idle watchers cost (release build, loopback, Postgres)")]
struct Args {
    /// Numbers of idle watchers, ascending (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    watchers: Vec<usize>,
    /// The idle window over which the database's transactions are counted.
    #[arg(long, default_value_t = 10)]
    window_seconds: u64,
    #[arg(long, default_value = "docs/bench-watch-fanout.json")]
    out: PathBuf,
    #[arg(long, default_value = "docs/bench-watch-fanout.svg")]
    svg: PathBuf,
}

/// Streams per client connection (the server allows 1,024 at once on one connection).
const STREAMS_PER_CONNECTION: usize = 500;
/// Postgres holds an idle backend's counts for up to 10 s; a window starts after this.
const SETTLE: Duration = Duration::from_secs(12);

#[derive(Clone, Copy)]
enum Svc {
    Registry,
    Pipeline,
}

impl Svc {
    fn name(self) -> &'static str {
        match self {
            Svc::Registry => "registry-svc",
            Svc::Pipeline => "pipeline-svc",
        }
    }
}

/// One service under test, on its own database.
struct Bench {
    svc: Svc,
    db: TestDb,
    server: Service,
    _registry: Option<Service>,
    token: String,
    /// The alias's runs (registry) to flip between.
    runs: Vec<String>,
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/<pid>/status")
}

async fn channels(url: &str, token: &str, n: usize) -> anyhow::Result<Vec<AuthedChannel>> {
    let mut out = Vec::new();
    for _ in 0..n.div_ceil(STREAMS_PER_CONNECTION).max(1) {
        out.push(connect(url, Some(token)).await?);
    }
    Ok(out)
}

impl Bench {
    async fn start(svc: Svc) -> anyhow::Result<Self> {
        let db = TestDb::postgres().await;
        let dir = db.data_dir();
        let (secret_path, secret) = testing::jwt_secret(&dir);
        // The harness learns the address from the info-level "listening" line.
        let env = [("RUST_LOG", "info")];
        let admin = issue_hs256(&secret, "bench", Role::Admin, 24 * 3600)?;
        let (server, registry, runs) = match svc {
            Svc::Registry => {
                let server = Service::start(
                    &binary("registry-svc"),
                    &server_flags(&dir.join("data"), &db.url, &secret_path)?,
                    &env,
                    dir.join("registry.log"),
                )?;
                let mut c = registry_client(&server.url(), Some(&admin), 8 << 20).await?;
                let runs = vec![
                    servable_run(&mut c, "watched-a").await?,
                    servable_run(&mut c, "watched-b").await?,
                ];
                c.set_alias(rpb::SetAliasRequest {
                    alias: "watched".into(),
                    run_id: runs[0].clone(),
                    ..Default::default()
                })
                .await?;
                (server, None, runs)
            }
            Svc::Pipeline => {
                let (registry, token_file) = pipeline_registry(
                    &binary("registry-svc"),
                    &dir,
                    &secret,
                    &secret_path,
                    &env,
                    None,
                )?;
                let registry_url = registry.url();
                let data_dir = dir.join("pipeline");
                let mut flags = server_flags(&data_dir, &db.url, &secret_path)?;
                // An API-only replica: queued operations stay queued, so nothing happens.
                flags.extend([
                    "--registry-url",
                    &registry_url,
                    "--registry-token-file",
                    path_str(&token_file)?,
                    "--queue-workers",
                    "false",
                    "--watch-heartbeat-seconds",
                    "3600",
                ]);
                let server = Service::start(
                    &binary("pipeline-svc"),
                    &flags,
                    &env,
                    dir.join("pipeline.log"),
                )?;
                (server, Some(registry), Vec::new())
            }
        };
        Ok(Self {
            svc,
            db,
            server,
            _registry: registry,
            token: admin,
            runs,
        })
    }

    /// A queued operation nobody will run.
    async fn queued_operation(&self) -> anyhow::Result<String> {
        let channel = connect(&self.server.url(), Some(&self.token)).await?;
        let mut pipe = ppb::pipeline_service_client::PipelineServiceClient::new(channel);
        let op = pipe
            .start_demo(ppb::StartDemoRequest {
                scenario: "showcase_rich".into(),
                series_count: 4,
                days: 200,
                horizon: 14,
                execution_mode: ppb::ExecutionMode::Queued as i32,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(op.operation_id)
    }

    /// Opens `n` watchers and waits until each is idle (past its snapshot or replay).
    /// Each then reports when its next change arrives.
    async fn watchers(
        &self,
        n: usize,
        operation: &str,
        arrived: &mpsc::UnboundedSender<Instant>,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let chans = channels(&self.server.url(), &self.token, n).await?;
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<anyhow::Result<()>>();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let channel = chans[i % chans.len()].clone();
            let (ready, arrived) = (ready_tx.clone(), arrived.clone());
            let svc = self.svc;
            let operation = operation.to_string();
            tasks.push(tokio::spawn(async move {
                let r = match svc {
                    Svc::Registry => alias_watcher(channel, &ready, &arrived).await,
                    Svc::Pipeline => op_watcher(channel, &operation, &ready, &arrived).await,
                };
                if let Err(e) = r {
                    let _ = ready.send(Err(e));
                }
            }));
        }
        for _ in 0..n {
            ready_rx.recv().await.context("watchers ended")??;
        }
        Ok(tasks)
    }

    /// The change every watcher waits for.
    async fn change(&self, round: usize, operation: &str) -> anyhow::Result<()> {
        let channel = connect(&self.server.url(), Some(&self.token)).await?;
        match self.svc {
            Svc::Registry => {
                rpb::registry_service_client::RegistryServiceClient::new(channel)
                    .set_alias(rpb::SetAliasRequest {
                        alias: "watched".into(),
                        run_id: self.runs[(round + 1) % 2].clone(),
                        ..Default::default()
                    })
                    .await?;
            }
            Svc::Pipeline => {
                OperationsServiceClient::new(channel)
                    .cancel_operation(ppb::CancelOperationRequest {
                        operation_id: operation.to_string(),
                        reason: "bench".into(),
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

async fn alias_watcher(
    channel: AuthedChannel,
    ready: &mpsc::UnboundedSender<anyhow::Result<()>>,
    arrived: &mpsc::UnboundedSender<Instant>,
) -> anyhow::Result<()> {
    let mut s = rpb::registry_service_client::RegistryServiceClient::new(channel)
        .watch_aliases(rpb::WatchAliasesRequest {
            aliases: vec!["watched".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    s.next().await.context("no snapshot")??;
    let _ = ready.send(Ok(()));
    s.next().await.context("no change")??;
    let _ = arrived.send(Instant::now());
    // Stay open (idle) until the round drops the task.
    std::future::pending::<()>().await;
    Ok(())
}

async fn op_watcher(
    channel: AuthedChannel,
    operation: &str,
    ready: &mpsc::UnboundedSender<anyhow::Result<()>>,
    arrived: &mpsc::UnboundedSender<Instant>,
) -> anyhow::Result<()> {
    let mut s = OperationsServiceClient::new(channel)
        .watch_operation(ppb::WatchOperationRequest {
            operation_id: operation.to_string(),
            after_sequence: 0,
        })
        .await?
        .into_inner();
    // The replay (CREATED) then idle: the next event is the cancellation.
    s.message().await?.context("no replay")?;
    let _ = ready.send(Ok(()));
    s.message().await?.context("no change")?;
    let _ = arrived.send(Instant::now());
    Ok(())
}

async fn bench(svc: Svc, args: &Args) -> anyhow::Result<Vec<Value>> {
    let b = Bench::start(svc).await?;
    let window = Duration::from_secs(args.window_seconds);
    let per_second = |n: i64| n as f64 / window.as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let rss_none = rss_kib(b.server.pid())?;
    let tx_none = per_second(b.db.transactions_during(window).await);
    eprintln!(
        "{}: no watcher: {tx_none:.1} transactions/s, RSS {rss_none} KiB",
        svc.name()
    );
    let mut rows = Vec::new();
    for (round, &n) in args.watchers.iter().enumerate() {
        let operation = match svc {
            Svc::Pipeline => b.queued_operation().await?,
            Svc::Registry => String::new(),
        };
        let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel();
        let tasks = b.watchers(n, &operation, &arrived_tx).await?;
        tokio::time::sleep(SETTLE).await;
        let rss = rss_kib(b.server.pid())?;
        let tx = per_second(b.db.transactions_during(window).await);
        let started = Instant::now();
        b.change(round, &operation).await?;
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            let at = tokio::time::timeout(Duration::from_secs(60), arrived_rx.recv())
                .await
                .context("a watcher missed the change")?
                .context("watchers ended")?;
            ms.push(at.duration_since(started).as_secs_f64() * 1e3);
        }
        let ms = Samples::new(ms);
        let (p50, p99, last) = (ms.pct(0.5), ms.pct(0.99), ms.pct(1.0));
        let per_stream = (rss.saturating_sub(rss_none)) as f64 * 1024.0 / n as f64;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        eprintln!(
            "{}: {n} watchers: {tx:.1} transactions/s (none: {tx_none:.1}), {per_stream:.0} B RSS per stream, change → all: p50 {p50:.1} ms p99 {p99:.1} ms last {last:.1} ms (load {})",
            svc.name(),
            load.trim()
        );
        rows.push(json!({
            "watchers": n,
            "transactions_per_second": tx,
            "transactions_per_second_no_watcher": tx_none,
            "rss_kib": rss,
            "rss_kib_no_watcher": rss_none,
            "rss_bytes_per_stream": per_stream,
            "change_to_watcher_p50_ms": p50,
            "change_to_watcher_p99_ms": p99,
            "change_to_last_watcher_ms": last,
            "loadavg": load.trim(),
        }));
        for t in tasks {
            t.abort();
        }
        // The server sees the streams close and frees their slots before the next round.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut server = b.server;
    let status = server.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "{} exited with {status}", svc.name());
    Ok(rows)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        !args.watchers.is_empty() && args.watchers.windows(2).all(|w| w[0] < w[1]),
        "--watchers must be ascending"
    );
    let mut results = serde_json::Map::new();
    let mut latency = Vec::new();
    let mut transactions = Vec::new();
    for svc in [Svc::Registry, Svc::Pipeline] {
        let rows = bench(svc, &args).await?;
        let points = |key: &str| {
            rows.iter()
                .map(|r| {
                    (
                        r["watchers"].as_f64().unwrap_or(0.0),
                        r[key].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        };
        latency.push(Series {
            name: format!("{} p99", svc.name()),
            points: points("change_to_watcher_p99_ms"),
        });
        transactions.push(Series {
            name: format!("{} tx/s", svc.name()),
            points: points("transactions_per_second"),
        });
        results.insert(svc.name().into(), Value::Array(rows));
    }
    report::write_results(&args.out, &Value::Object(results.clone()))?;
    let mut series = latency;
    series.extend(transactions);
    Chart {
        title: "Idle watchers: change → every watcher p99 (ms), database tx/s".into(),
        x_label: "idle watchers".into(),
        y_label: "ms | tx/s".into(),
        log_x: true,
        series,
    }
    .write(&args.svg)?;
    println!("| service | watchers | tx/s | tx/s, no watcher | RSS per stream | change → watcher p50 | p99 | last |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (svc, rows) in &results {
        for r in rows.as_array().into_iter().flatten() {
            println!(
                "| {svc} | {} | {:.1} | {:.1} | {:.0} B | {:.1} ms | {:.1} ms | {:.1} ms |",
                r["watchers"],
                r["transactions_per_second"].as_f64().unwrap_or(0.0),
                r["transactions_per_second_no_watcher"]
                    .as_f64()
                    .unwrap_or(0.0),
                r["rss_bytes_per_stream"].as_f64().unwrap_or(0.0),
                r["change_to_watcher_p50_ms"].as_f64().unwrap_or(0.0),
                r["change_to_watcher_p99_ms"].as_f64().unwrap_or(0.0),
                r["change_to_last_watcher_ms"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}
