//! ListRuns growth benchmark (run by hand, release build, loopback only).
//!
//! For each backend it starts `target/release/registry-svc` (auth on) on a fresh SQLite
//! file or Postgres database, then grows the registry to each size in `--sizes` by bulk
//! SQL (one `INSERT … SELECT` per 100k runs; the database's triggers fill the tag, param
//! and metric index tables as they do for `CreateRun`), and at each size times ListRuns
//! through real gRPC for a tag filter, a metric order and a compound filter, next to the
//! same server's gRPC health check (the transport's floor in this session). Writes JSON
//! and an SVG of p99 against the size.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use capstan_client::{registry_client, RegistryClient};
use capstan_proto::registry::v1::{self as pb};
use capstan_server::{
    auth::{issue_hs256, Role},
    db::Backend,
    testing::{self, TestDb},
};
use capstan_tests::{
    binary,
    plot::{Chart, Series},
    report, server_flags,
    stats::{load_average, time_calls},
    GrowthArgs, Service,
};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "ListRuns latency as the registry grows (release build, loopback only)")]
struct Args {
    #[command(flatten)]
    growth: GrowthArgs,
    /// Unmeasured requests before each query.
    #[arg(long, default_value_t = 30)]
    warmup: usize,
    #[arg(long, default_value = "docs/bench-list-growth.json")]
    out: PathBuf,
    #[arg(long, default_value = "docs/bench-list-growth.svg")]
    svg: PathBuf,
}

/// Runs per experiment tag value: a selective filter matches this many at every size.
const RUNS_PER_EXPERIMENT: u64 = 100;
const BATCH: u64 = 100_000;

/// One ListRuns shape; `k` varies the experiment so that caches do not serve one page.
struct Query {
    name: &'static str,
    request: fn(u64) -> pb::ListRunsRequest,
}

const QUERIES: [Query; 3] = [
    Query {
        name: "tag filter",
        request: |k| pb::ListRunsRequest {
            filter: format!("tags.experiment = \"e{k}\""),
            page_size: 50,
            ..Default::default()
        },
    },
    Query {
        name: "metric order",
        request: |k| pb::ListRunsRequest {
            filter: format!("tags.team = \"t{}\"", k % 10),
            order_by: "metrics.wape".into(),
            page_size: 50,
            ..Default::default()
        },
    },
    Query {
        name: "compound filter",
        request: |k| pb::ListRunsRequest {
            filter: format!(
                "tags.experiment = \"e{k}\" AND (status = FAILED OR metrics.wape < 0.5) \
                 AND NOT params.season = \"3\" AND model_type != \"m9\""
            ),
            order_by: "metrics.wape desc".into(),
            page_size: 50,
            ..Default::default()
        },
    },
];

/// Rows `from..to` as one statement: a run's tags, params and metrics derive from its
/// number (`team` in ten groups, `experiment` in groups of 100, a scattered `wape`).
fn bulk_insert(backend: Backend, from: u64, to: u64) -> String {
    let cols = "run_id, namespace, name, model_type, params, tags, metrics, status, create_time, \
                update_time, heartbeat_time, heartbeat_timeout_ms, version";
    match backend {
        Backend::Sqlite => format!(
            "INSERT INTO runs ({cols}) \
             WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {to}) \
             SELECT printf('%08x-0000-4000-8000-%012x', i, i), 'default', 'run-' || i, 'm' || (i % 10), \
             '{{\"season\":\"' || (i % 7) || '\"}}', \
             '{{\"team\":\"t' || (i % 10) || '\",\"experiment\":\"e' || (i / {RUNS_PER_EXPERIMENT}) || '\"}}', \
             '{{\"wape\":' || (((i * 7919) % 10000) / 10000.0) || '}}', \
             CASE i % 5 WHEN 0 THEN 'FAILED' ELSE 'SUCCEEDED' END, \
             1700000000000000 + i * 1000, 1700000000000000 + i * 1000, 1700000000000000 + i * 1000, 0, 1 \
             FROM n"
        ),
        Backend::Postgres => format!(
            "INSERT INTO runs ({cols}) \
             SELECT lpad(to_hex(i), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0'), \
             'default', 'run-' || i, 'm' || (i % 10), \
             '{{\"season\":\"' || (i % 7) || '\"}}', \
             '{{\"team\":\"t' || (i % 10) || '\",\"experiment\":\"e' || (i / {RUNS_PER_EXPERIMENT}) || '\"}}', \
             '{{\"wape\":' || (((i * 7919) % 10000)::float8 / 10000) || '}}', \
             CASE i % 5 WHEN 0 THEN 'FAILED' ELSE 'SUCCEEDED' END, \
             1700000000000000 + i * 1000, 1700000000000000 + i * 1000, 1700000000000000 + i * 1000, 0, 1 \
             FROM generate_series({from}::bigint, {to}::bigint - 1) AS i"
        ),
    }
}

/// The experiment the `i`-th call asks for: a multiplicative walk over them, the same at
/// every size, so that caches do not serve one page.
fn experiment(i: u64) -> u64 {
    (i * 7_919) % 97
}

async fn bench_backend(args: &Args, db: &TestDb) -> anyhow::Result<Vec<Value>> {
    let dir = db.data_dir();
    let (secret_path, secret) = testing::jwt_secret(&dir);
    let data_dir = dir.join("data");
    let mut svc = Service::start(
        &binary("registry-svc"),
        &server_flags(&data_dir, &db.url, &secret_path)?,
        &[("RUST_LOG", "info")],
        dir.join("registry.log"),
    )?;
    let token = issue_hs256(&secret, "bench", Role::Admin, 24 * 3600)?;
    let client: RegistryClient = registry_client(&svc.url(), Some(&token), 8 << 20).await?;
    let channel = tonic::transport::Endpoint::from_shared(svc.url())?
        .connect()
        .await?;
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    // Rows go in beside the service once it has migrated the schema (it listens first).
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(s) = client
        .clone()
        .list_runs(pb::ListRunsRequest::default())
        .await
    {
        ensure!(
            Instant::now() < deadline,
            "registry-svc never served ListRuns: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pool = capstan_server::db::pool(&db.url, db.backend(), 1, None).await?;
    let mut rows = Vec::new();
    let mut loaded = 0;
    for &size in &args.growth.sizes {
        let started = Instant::now();
        while loaded < size {
            let to = (loaded + BATCH).min(size);
            sqlx::query(&bulk_insert(db.backend(), loaded, to))
                .execute(&pool)
                .await
                .context("bulk insert")?;
            loaded = to;
        }
        // As autovacuum would after a bulk change; SQLite gets none, as the service runs none.
        if db.backend() == Backend::Postgres {
            sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
        }
        eprintln!(
            "{:?}: {size} runs loaded in {:.1} s",
            db.backend(),
            started.elapsed().as_secs_f64()
        );
        let load = load_average();
        let health_ms = time_calls(args.warmup, args.growth.requests, |_| {
            let mut h = health.clone();
            async move {
                h.check(tonic_health::pb::HealthCheckRequest::default())
                    .await?;
                Ok(())
            }
        })
        .await?;
        let (h50, h99) = (health_ms.pct(0.5), health_ms.pct(0.99));
        let mut queries = Vec::new();
        for q in &QUERIES {
            let samples = time_calls(args.warmup, args.growth.requests, |i| {
                let mut c = client.clone();
                let req = (q.request)(experiment(i));
                async move {
                    let page = c.list_runs(req).await?.into_inner();
                    ensure!(!page.runs.is_empty(), "an empty page measures nothing");
                    Ok(())
                }
            })
            .await?;
            let (p50, p99) = (samples.pct(0.5), samples.pct(0.99));
            eprintln!(
                "  {:<16} p50 {p50:7.2} ms  p99 {p99:7.2} ms  (health p50 {h50:.2} ms)",
                q.name
            );
            queries.push(json!({"query": q.name, "p50_ms": p50, "p99_ms": p99}));
        }
        rows.push(json!({
            "runs": size,
            "health_p50_ms": h50,
            "health_p99_ms": h99,
            "loadavg": load,
            "queries": queries,
        }));
    }
    pool.close().await;
    let status = svc.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "registry-svc exited with {status}");
    Ok(rows)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.growth.check()?;
    let backends = args.growth.backend.list();
    let mut results = serde_json::Map::new();
    let mut series = Vec::new();
    for backend in backends {
        let db = TestDb::new(backend).await;
        let rows = bench_backend(&args, &db).await?;
        for (i, q) in QUERIES.iter().enumerate() {
            series.push(Series {
                name: format!("{backend:?} {}", q.name),
                points: rows
                    .iter()
                    .map(|r| {
                        (
                            r["runs"].as_f64().unwrap_or(0.0),
                            r["queries"][i]["p99_ms"].as_f64().unwrap_or(0.0),
                        )
                    })
                    .collect(),
            });
        }
        results.insert(format!("{backend:?}").to_lowercase(), Value::Array(rows));
    }
    report::write_results(&args.out, &Value::Object(results.clone()))?;
    Chart {
        title: "ListRuns p99 as the registry grows".into(),
        x_label: "runs".into(),
        y_label: "p99 ms".into(),
        log_x: true,
        series,
    }
    .write(&args.svg)?;
    println!("| backend | runs | query | p50 ms | p99 ms | health p50 ms |");
    println!("|---|---:|---|---:|---:|---:|");
    for (backend, rows) in &results {
        for r in rows.as_array().into_iter().flatten() {
            for q in r["queries"].as_array().into_iter().flatten() {
                println!(
                    "| {backend} | {} | {} | {:.2} | {:.2} | {:.2} |",
                    r["runs"],
                    q["query"].as_str().unwrap_or(""),
                    q["p50_ms"].as_f64().unwrap_or(0.0),
                    q["p99_ms"].as_f64().unwrap_or(0.0),
                    r["health_p50_ms"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    Ok(())
}
