//! Pipeline growth benchmark (issue 14, "Growth benchmarks"), run by hand on a release
//! build. It drives the engine as a library (what the gRPC handlers call, minus the
//! transport, whose constant cost the other benchmarks measure) on a fresh database of
//! each backend:
//!
//! - **the event log**: the store grows to each of `--sizes` terminal operations (bulk
//!   SQL, five events and one step each, as a finished one-step operation has), and at
//!   each size it times a watch's replay (the first event, and the whole log to its end)
//!   of operations spread over the store, and ListOperations: the first page, a page of
//!   one status, and the 20th page through keyset tokens;
//! - **the queue**: 10,000 QUEUED operations are enqueued on an API-only engine, then
//!   claimed by two concurrent claimers to the last; claims a second per 1,000, from
//!   10,000 pending down to none. Then, on a working engine, the enqueue-to-start time
//!   (CREATED → STARTED, server clocks) of a one-step operation with no job waiting, and
//!   with 10,000 operations waiting behind one held concurrency key.
//!
//! Writes JSON and one SVG per curve, and prints Markdown tables.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use capstan_server::{db::Backend, testing::TestDb, time::now_micros};
use capstan_tests::{
    plot::{Chart, Series},
    report,
    stats::{load_average, ms, time_calls, Samples},
    GrowthArgs,
};
use clap::Parser;
use futures::{stream, StreamExt, TryStreamExt};
use pipeline_svc::{
    domain::{
        engine::{
            operation::{EventType, ExecutionMode, OpStatus},
            ports::OpFilter,
            retention::Retention,
            workflow::Workflows,
            Engine, EngineConfig, ListOperations, StartOperation,
        },
        noop::{self, Noop, NoopParams},
    },
    store::sql::{SqlStore, POSTGRES_SCHEMA},
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Event log and queue costs as the pipeline grows (release build)")]
struct Args {
    #[command(flatten)]
    growth: GrowthArgs,
    /// Jobs pending in the queue phases.
    #[arg(long, default_value_t = 10_000)]
    pending: usize,
    /// Measured enqueue-to-start samples per queue state.
    #[arg(long, default_value_t = 50)]
    starts: usize,
    /// Which phases run: `events`, `queue`, `purge` (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "events,queue,purge")]
    phases: Vec<String>,
    /// Old events the purge phase removes (five per operation).
    #[arg(long, default_value_t = 1_000_000)]
    purge_events: u64,
    /// Each live-work window of the purge phase (before and after the purge).
    #[arg(long, default_value_t = 8)]
    window_seconds: u64,
    #[arg(long, default_value = "docs/bench-pipeline-growth.json")]
    out: PathBuf,
    /// Where the SVGs go (`<prefix>-events.svg`, `<prefix>-queue.svg`).
    #[arg(long, default_value = "docs/bench-pipeline-growth")]
    svg_prefix: String,
}

const OWNER: &str = "bench";
const BATCH: u64 = 100_000;
const EVENTS_PER_OP: i64 = 5;
const OP_LIMIT: Duration = Duration::from_secs(120);

/// The operation number `i` of the bulk load as a UUID (the same text on both backends).
fn op_id(i: u64) -> Uuid {
    Uuid::from_u128((u128::from(i) << 64) | 0x4000_8000_0000_0000)
}

/// SQL text of the rows `from..to`: operations with their finished job, one step and five
/// events each. Every tenth failed. Times step 1 ms apart from `t0`.
fn bulk_insert(backend: Backend, from: u64, to: u64, t0: i64) -> [String; 4] {
    // The id's text: 8-4-4-4-12 hex digits of `op_id(i)`.
    let (series, id) = match backend {
        Backend::Sqlite => (
            format!(
                "WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {to})"
            ),
            "printf('%08x-%04x-%04x-4000-800000000000', i >> 32, (i >> 16) & 65535, i & 65535)",
        ),
        Backend::Postgres => (
            String::new(),
            "lpad(to_hex(i >> 32), 8, '0') || '-' || lpad(to_hex((i >> 16) & 65535), 4, '0') || '-' \
             || lpad(to_hex(i & 65535), 4, '0') || '-4000-800000000000'",
        ),
    };
    let from_rows = match backend {
        Backend::Sqlite => "FROM n".to_owned(),
        Backend::Postgres => format!("FROM generate_series({from}::bigint, {to}::bigint - 1) AS i"),
    };
    let time = format!("({t0} + i * 1000)");
    let status = "CASE WHEN i % 10 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END";
    let ops = format!(
        "INSERT INTO operations (operation_id, kind, status, progress_percent, message, owner, \
           execution_mode, params, state, cancel_requested, last_sequence, create_time, \
           update_time, start_time, end_time) \
         {series} SELECT {id}, '{kind}', {status}, 100, 'done', '{OWNER}', 'QUEUED', \
           '{{\"steps\":1}}', '{{}}', 0, {EVENTS_PER_OP}, {time}, {time} + 900, {time} + 100, {time} + 900 \
         {from_rows}",
        kind = noop::KIND
    );
    let steps = format!(
        "INSERT INTO operation_steps (operation_id, step_index, name, phase, status, detail, \
           start_time, end_time, attempt) \
         {series} SELECT {id}, 0, 's0', '', CASE WHEN i % 10 = 0 THEN 'FAILED' ELSE 'PASSED' END, \
           '', {time} + 200, {time} + 800, 1 {from_rows}"
    );
    // Five events of each operation from one row of `(i, sequence)`.
    let events = format!(
        "INSERT INTO operation_events (operation_id, sequence, time, type, step, phase, status, \
           step_status, percent, message) \
         {series} SELECT {id}, s.seq, {time} + s.seq * 100, s.type, s.step, '', \
           CASE WHEN s.seq = 5 THEN {status} WHEN s.seq = 1 THEN 'PENDING' ELSE 'RUNNING' END, \
           CASE WHEN s.seq = 4 THEN 'PASSED' ELSE '' END, s.seq * 20, 'event' \
         {from_rows} CROSS JOIN (SELECT 1 AS seq, 'CREATED' AS type, '' AS step \
           UNION ALL SELECT 2, 'STARTED', '' UNION ALL SELECT 3, 'STEP_STARTED', 's0' \
           UNION ALL SELECT 4, 'STEP_FINISHED', 's0' UNION ALL SELECT 5, 'FINISHED', '') AS s"
    );
    let jobs = format!(
        "INSERT INTO jobs (job_id, idempotency_key, operation_id, state, lease_owner, lease_token, \
           lease_expires, attempts, available_time, update_time) \
         {series} SELECT {id}, 'operation:' || {id}, {id}, 'done', '', 1, 0, 1, {time}, {time} + 900 \
         {from_rows}"
    );
    [ops, jobs, steps, events]
}

/// Loads the operations `from..to` (see [`bulk_insert`]) and refreshes the statistics.
async fn load(
    pool: &sqlx::AnyPool,
    backend: Backend,
    from: u64,
    to: u64,
    t0: i64,
) -> anyhow::Result<()> {
    let mut at = from;
    while at < to {
        let next = (at + BATCH).min(to);
        for sql in bulk_insert(backend, at, next, t0) {
            sqlx::query(&sql)
                .execute(pool)
                .await
                .context("bulk insert")?;
        }
        at = next;
    }
    let analyze = match backend {
        Backend::Sqlite => "ANALYZE",
        Backend::Postgres => "VACUUM ANALYZE",
    };
    sqlx::query(analyze).execute(pool).await?;
    Ok(())
}

/// An engine of the noop workflow on `db`, QUEUED by default, with or without queue workers.
async fn engine(
    db: &TestDb,
    queue_workers: bool,
) -> anyhow::Result<(Arc<Engine>, CancellationToken)> {
    let shutdown = CancellationToken::new();
    let engine = Engine::new(
        Arc::new(SqlStore::connect(&db.url, "growth").await?),
        EngineConfig {
            replica_id: "growth".into(),
            default_mode: ExecutionMode::Queued,
            queue_workers,
            worker_concurrency: 4,
            ..Default::default()
        },
        Workflows::new([Noop::new() as _])?,
        shutdown.clone(),
    );
    engine.spawn_background();
    Ok((engine, shutdown))
}

async fn event_log(args: &Args, backend: Backend) -> anyhow::Result<Vec<Value>> {
    let db = TestDb::new(backend).await;
    let (engine, shutdown) = engine(&db, false).await?;
    let pool = capstan_server::db::pool(&db.url, backend, 1, Some(POSTGRES_SCHEMA)).await?;
    let total = *args.growth.sizes.last().context("no --sizes")?;
    let t0 = now_micros() - 2 * 86_400_000_000 - total as i64 * 1000;
    let mut loaded = 0;
    let mut rows = Vec::new();
    for &size in &args.growth.sizes {
        let started = Instant::now();
        load(&pool, backend, loaded, size, t0).await?;
        loaded = size;
        eprintln!(
            "{backend:?}: {size} operations loaded in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let load = load_average();
        // Operations spread over the whole store (a multiplicative walk).
        let pick = |k: u64| op_id((k * 7_919 + 13) % size);
        let (mut first, mut whole) = (Vec::new(), Vec::new());
        for k in 0..(args.growth.requests + args.growth.requests / 10) as u64 {
            let t = Instant::now();
            let mut rx = engine.watch(pick(k), Some(OWNER), 0).await?;
            let mut n = 0;
            while let Some(e) = tokio::time::timeout(OP_LIMIT, rx.recv()).await? {
                if n == 0 && k as usize >= args.growth.requests / 10 {
                    first.push(ms(t.elapsed()));
                }
                n += 1;
                if e.kind == EventType::Finished {
                    break;
                }
            }
            ensure!(
                n == EVENTS_PER_OP,
                "replayed {n} events, not {EVENTS_PER_OP}"
            );
            if k as usize >= args.growth.requests / 10 {
                whole.push(ms(t.elapsed()));
            }
        }
        let (first, replay) = (Samples::new(first), Samples::new(whole));
        let list = |status: Option<OpStatus>| ListOperations {
            filter: OpFilter {
                owner: Some(OWNER.into()),
                status,
                kind: None,
            },
            page_size: 50,
            page_token: String::new(),
        };
        let first_page = time_calls(args.growth.requests / 10, args.growth.requests, |_| {
            let engine = engine.clone();
            async move {
                let (page, _) = engine.list(&list(None)).await?;
                ensure!(page.len() == 50, "a short page");
                Ok(())
            }
        })
        .await?;
        let failed_page = time_calls(args.growth.requests / 10, args.growth.requests, |_| {
            let engine = engine.clone();
            async move {
                let (page, _) = engine.list(&list(Some(OpStatus::Failed))).await?;
                ensure!(page.len() == 50, "a short page");
                Ok(())
            }
        })
        .await?;
        // The token of page 20 (the 951st-1000th newest), then that page timed.
        let mut req = list(None);
        for _ in 0..19 {
            req.page_token = engine.list(&req).await?.1;
        }
        let deep_page = time_calls(args.growth.requests / 10, args.growth.requests, |_| {
            let engine = engine.clone();
            let req = &req;
            async move {
                let (page, _) = engine.list(req).await?;
                ensure!(page.len() == 50, "a short page");
                Ok(())
            }
        })
        .await?;
        for (label, s) in [
            ("watch replay, first event", &first),
            ("watch replay, whole log", &replay),
            ("ListOperations first page", &first_page),
            ("ListOperations FAILED only", &failed_page),
            ("ListOperations page 20", &deep_page),
        ] {
            s.line(&format!("{backend:?} {size} {label}"));
        }
        rows.push(json!({
            "operations": size,
            "events": size as i64 * EVENTS_PER_OP,
            "loadavg": load,
            "replay_first_event": first.to_json(),
            "replay_whole_log": replay.to_json(),
            "list_first_page": first_page.to_json(),
            "list_failed_page": failed_page.to_json(),
            "list_page_20": deep_page.to_json(),
        }));
    }
    pool.close().await;
    shutdown.cancel();
    Ok(rows)
}

fn start_request(params: NoopParams) -> StartOperation {
    StartOperation {
        kind: noop::KIND.into(),
        params: params.to_json(),
        request_id: None,
        mode: Some(ExecutionMode::Queued),
        timeout: None,
    }
}

/// Enqueues `n` operations of `params`, eight at a time.
async fn enqueue(engine: &Arc<Engine>, n: usize, params: &NoopParams) -> anyhow::Result<()> {
    stream::iter(0..n)
        .map(|_| {
            let engine = engine.clone();
            let params = params.clone();
            async move { engine.start(OWNER, start_request(params)).await }
        })
        .buffer_unordered(8)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(())
}

/// CREATED → STARTED (server clocks, ms) of `n` one-step operations started one by one.
async fn enqueue_to_start(engine: &Arc<Engine>, n: usize) -> anyhow::Result<Samples> {
    let mut v = Vec::new();
    for i in 0..n + 3 {
        let op = engine
            .start(OWNER, start_request(NoopParams::steps(1)))
            .await?;
        let mut rx = engine.watch(op.id, None, 0).await?;
        let (mut created, mut started) = (None, None);
        while let Some(e) = tokio::time::timeout(OP_LIMIT, rx.recv())
            .await
            .context("a queued operation did not finish in time")?
        {
            match e.kind {
                EventType::Created => created = Some(e.time),
                EventType::Started => started = started.or(Some(e.time)),
                EventType::Finished => {
                    ensure!(e.status == OpStatus::Succeeded, "{}", e.message);
                    break;
                }
                _ => {}
            }
        }
        if i >= 3 {
            let (c, s) = (
                created.context("no CREATED")?,
                started.context("no STARTED")?,
            );
            v.push((s - c) as f64 / 1e3);
        }
    }
    Ok(Samples::new(v))
}

async fn queue(args: &Args, backend: Backend) -> anyhow::Result<Value> {
    // Claims: an API-only engine enqueues, two claimers drain.
    let db = TestDb::new(backend).await;
    let (api, api_shutdown) = engine(&db, false).await?;
    let started = Instant::now();
    enqueue(&api, args.pending, &NoopParams::steps(1)).await?;
    eprintln!(
        "{backend:?}: {} operations enqueued in {:.1} s",
        args.pending,
        started.elapsed().as_secs_f64()
    );
    let mut claims = Vec::new();
    let mut pending = args.pending;
    while pending > 0 {
        let chunk = pending.min(1000);
        let t = Instant::now();
        let jobs = api.jobs().clone();
        let claimed = stream::iter(0..chunk)
            .map(|i| {
                let jobs = jobs.clone();
                async move {
                    jobs.claim(&format!("claimer-{}", i % 2), now_micros(), 600_000)
                        .await
                }
            })
            .buffer_unordered(2)
            .try_collect::<Vec<_>>()
            .await?;
        let secs = t.elapsed().as_secs_f64();
        ensure!(
            claimed.iter().all(Option::is_some),
            "a claim found the queue empty with {pending} pending"
        );
        eprintln!(
            "{backend:?}: {chunk} claims from {pending} pending: {:.0}/s",
            chunk as f64 / secs
        );
        claims.push(json!({"pending": pending, "claims_per_s": chunk as f64 / secs}));
        pending -= chunk;
    }
    api_shutdown.cancel();

    // Enqueue-to-start on a working engine, before and with waiters behind a held key.
    let db = TestDb::new(backend).await;
    let (engine, shutdown) = engine(&db, true).await?;
    let idle = enqueue_to_start(&engine, args.starts).await?;
    idle.line(&format!("{backend:?} enqueue → start, nothing waiting"));
    let key = NoopParams {
        steps: 1,
        sleep_ms: 3_600_000,
        keys: vec!["held".into()],
        ..NoopParams::default()
    };
    let holder = engine.start(OWNER, start_request(key.clone())).await?;
    let deadline = Instant::now() + OP_LIMIT;
    while engine.get(holder.id, None).await?.status != OpStatus::Running {
        ensure!(Instant::now() < deadline, "the key holder did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    enqueue(&engine, args.pending, &key).await?;
    eprintln!(
        "{backend:?}: {} operations waiting behind a key, enqueued in {:.1} s",
        args.pending,
        started.elapsed().as_secs_f64()
    );
    let waiting = enqueue_to_start(&engine, args.starts).await?;
    waiting.line(&format!(
        "{backend:?} enqueue → start, {} waiting",
        args.pending
    ));
    shutdown.cancel();
    Ok(json!({
        "claims": claims,
        "enqueue_to_start_nothing_waiting": idle.to_json(),
        "enqueue_to_start_behind_key_waiters": waiting.to_json(),
        "waiters": args.pending,
    }))
}

/// DIRECT five-step no-op operations completed a second by four concurrent clients, over
/// `window`, or until `until` is cancelled when there is one.
async fn live_work(
    engine: &Arc<Engine>,
    window: Duration,
    until: Option<CancellationToken>,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + window;
    let started = Instant::now();
    let clients = (0..4).map(|_| {
        let engine = engine.clone();
        let until = until.clone();
        async move {
            let mut done = 0u64;
            loop {
                let over = match &until {
                    Some(t) => t.is_cancelled(),
                    None => Instant::now() >= deadline,
                };
                if over {
                    return anyhow::Ok(done);
                }
                let op = engine
                    .start(
                        OWNER,
                        StartOperation {
                            mode: Some(ExecutionMode::Direct),
                            ..start_request(NoopParams::steps(5))
                        },
                    )
                    .await?;
                let mut rx = engine.watch(op.id, None, 0).await?;
                while let Some(e) = tokio::time::timeout(OP_LIMIT, rx.recv()).await? {
                    if e.kind == EventType::Finished {
                        ensure!(e.status == OpStatus::Succeeded, "{}", e.message);
                        break;
                    }
                }
                done += 1;
            }
        }
    });
    let done: u64 = futures::future::try_join_all(clients)
        .await?
        .into_iter()
        .sum();
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Live work before, during and after a purge of `--purge-events` old events.
async fn purge(args: &Args, backend: Backend) -> anyhow::Result<Value> {
    let db = TestDb::new(backend).await;
    let (engine, shutdown) = engine(&db, true).await?;
    let pool = capstan_server::db::pool(&db.url, backend, 1, Some(POSTGRES_SCHEMA)).await?;
    let old_ops = args.purge_events / EVENTS_PER_OP as u64;
    let t0 = now_micros() - 60 * 86_400_000_000 - old_ops as i64 * 1000;
    let started = Instant::now();
    load(&pool, backend, 0, old_ops, t0).await?;
    eprintln!(
        "{backend:?}: {old_ops} old operations ({} events) loaded in {:.1} s",
        args.purge_events,
        started.elapsed().as_secs_f64()
    );
    let window = Duration::from_secs(args.window_seconds);
    let before = live_work(&engine, window, None).await?;
    let purging = CancellationToken::new();
    let purger = {
        let engine = engine.clone();
        let purging = purging.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let pass = engine
                .purge_expired(Retention {
                    days: 30,
                    batch: 500,
                })
                .await;
            purging.cancel();
            pass.map(|p| (p, t.elapsed()))
        })
    };
    let during = live_work(&engine, OP_LIMIT, Some(purging)).await?;
    let (pass, took) = purger.await??;
    let pass = pass.context("another replica held the purger's lease")?;
    let after = live_work(&engine, window, None).await?;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operation_events WHERE time < $1")
        .bind(t0 + old_ops as i64 * 1000 + 1_000_000)
        .fetch_one(&pool)
        .await?;
    ensure!(left == 0, "{left} old events left after the purge");
    let per_s = pass.rows.events as f64 / took.as_secs_f64();
    eprintln!(
        "{backend:?}: purged {} events in {} batches, {:.1} s ({per_s:.0} events/s); live work {before:.1} / {during:.1} / {after:.1} ops/s (before / during / after)",
        pass.rows.events,
        pass.batches,
        took.as_secs_f64()
    );
    pool.close().await;
    shutdown.cancel();
    Ok(json!({
        "events_purged": pass.rows.events,
        "operations_purged": pass.rows.operations,
        "batches": pass.batches,
        "purge_seconds": took.as_secs_f64(),
        "events_per_s": per_s,
        "live_ops_per_s_before": before,
        "live_ops_per_s_during": during,
        "live_ops_per_s_after": after,
        "during_vs_without": during / ((before + after) / 2.0),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.growth.check()?;
    ensure!(
        args.starts > 0 && args.pending > 0,
        "--starts and --pending must be positive"
    );
    let backends = args.growth.backend.list();
    let mut results = serde_json::Map::new();
    let runs = |phase: &str| args.phases.iter().any(|p| p == phase);
    for backend in backends {
        let mut r = json!({});
        if runs("events") {
            r["event_log"] = json!(event_log(&args, backend).await?);
        }
        if runs("queue") {
            r["queue"] = queue(&args, backend).await?;
        }
        if runs("purge") {
            r["purge"] = purge(&args, backend).await?;
        }
        results.insert(format!("{backend:?}").to_lowercase(), r);
    }
    let results = Value::Object(results);
    report::write_results(&args.out, &results)?;
    charts(&args, &results)?;
    tables(&results);
    Ok(())
}

const EVENT_CURVES: [(&str, &str); 4] = [
    ("replay_first_event", "watch replay, first event"),
    ("list_first_page", "ListOperations first page"),
    ("list_failed_page", "ListOperations FAILED only"),
    ("list_page_20", "ListOperations page 20"),
];

fn charts(args: &Args, results: &Value) -> anyhow::Result<()> {
    let backends = results.as_object().into_iter().flatten();
    let mut events = Vec::new();
    let mut queue = Vec::new();
    for (backend, r) in backends {
        for (key, label) in EVENT_CURVES {
            events.push(Series {
                name: format!("{backend} {label}"),
                points: r["event_log"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|row| {
                        let x = row["operations"].as_f64().unwrap_or(f64::NAN);
                        (x, row[key]["p99_ms"].as_f64().unwrap_or(f64::NAN))
                    })
                    .collect(),
            });
        }
        queue.push(Series {
            name: format!("{backend} claims/s"),
            points: r["queue"]["claims"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["pending"].as_f64().unwrap_or(f64::NAN),
                        c["claims_per_s"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect(),
        });
    }
    Chart {
        title: "Event log: p99 as stored operations grow".into(),
        x_label: "stored operations".into(),
        y_label: "p99 ms".into(),
        log_x: true,
        series: events,
    }
    .write(&PathBuf::from(format!("{}-events.svg", args.svg_prefix)))?;
    Chart {
        title: "Queue: claims a second against the jobs pending".into(),
        x_label: "jobs pending".into(),
        y_label: "claims/s".into(),
        log_x: false,
        series: queue,
    }
    .write(&PathBuf::from(format!("{}-queue.svg", args.svg_prefix)))?;
    Ok(())
}

fn tables(results: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!("| backend | operations | watch replay first event p50 / p99 | whole log p50 / p99 | list first page p50 / p99 | FAILED only p50 / p99 | page 20 p50 / p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (backend, r) in results.as_object().into_iter().flatten() {
        for row in r["event_log"].as_array().into_iter().flatten() {
            let cell = |k: &str| {
                format!(
                    "{:.2} / {:.2} ms",
                    f(&row[k]["p50_ms"]),
                    f(&row[k]["p99_ms"])
                )
            };
            println!(
                "| {backend} | {} | {} | {} | {} | {} | {} |",
                row["operations"],
                cell("replay_first_event"),
                cell("replay_whole_log"),
                cell("list_first_page"),
                cell("list_failed_page"),
                cell("list_page_20"),
            );
        }
    }
    println!();
    println!("| backend | events purged | batches | purge events/s | live ops/s before / during / after | during ÷ without |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (backend, r) in results.as_object().into_iter().flatten() {
        let p = &r["purge"];
        if p.is_null() {
            continue;
        }
        println!(
            "| {backend} | {} | {} | {:.0} | {:.1} / {:.1} / {:.1} | {:.2} |",
            p["events_purged"],
            p["batches"],
            f(&p["events_per_s"]),
            f(&p["live_ops_per_s_before"]),
            f(&p["live_ops_per_s_during"]),
            f(&p["live_ops_per_s_after"]),
            f(&p["during_vs_without"]),
        );
    }
    println!();
    println!("| backend | claims/s at 10k / 5k / 1k pending | enqueue → start p50 / p99, nothing waiting | with the waiters behind a key |");
    println!("|---|---:|---:|---:|");
    for (backend, r) in results.as_object().into_iter().flatten() {
        let q = &r["queue"];
        let at = |pending: f64| {
            q["claims"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| f(&c["pending"]) == pending)
                .map_or("–".to_owned(), |c| {
                    format!("{:.0}", f(&c["claims_per_s"]))
                })
        };
        let cell = |k: &str| format!("{:.1} / {:.1} ms", f(&q[k]["p50_ms"]), f(&q[k]["p99_ms"]));
        println!(
            "| {backend} | {} / {} / {} | {} | {} |",
            at(10_000.0),
            at(5_000.0),
            at(1_000.0),
            cell("enqueue_to_start_nothing_waiting"),
            cell("enqueue_to_start_behind_key_waiters"),
        );
    }
}
