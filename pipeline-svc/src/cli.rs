//! `pipeline-svc demo`: registry-svc and pipeline-svc in one process on the embedded
//! SQLite default, authentication on with a generated secret, and the showcase run over
//! real gRPC on loopback, with a live progress display and a summary.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use capstan_client as client;
use capstan_proto::{
    pipeline::v1::{
        self as pb, operations_service_client::OperationsServiceClient,
        pipeline_service_client::PipelineServiceClient,
    },
    registry::v1 as rpb,
};
use capstan_server::{
    auth::{issue_hs256, OidcArgs, Role},
    config::{AuthMode, CommonArgs, LogFormat},
    serve::ServeOptions,
};
use futures::StreamExt;
use uuid::Uuid;

use crate::app::{self, KnowledgeProvider, PipelineArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// `showcase_rich` (all phases) or `showcase_minimal` (data, training, registry, cleanup).
    #[arg(long, default_value = "showcase_rich")]
    pub scenario: String,
    /// Seed of the synthetic sales panel.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of series.
    #[arg(long, default_value_t = 24)]
    pub series: i32,
    /// Days of history.
    #[arg(long, default_value_t = 365)]
    pub days: i32,
    /// Forecast horizon in days.
    #[arg(long, default_value_t = 28)]
    pub horizon: i32,
    /// Where the demo keeps its databases, artifacts, chart and briefing.
    #[arg(long, default_value = ".capstan/demo")]
    pub data_dir: PathBuf,
    /// Fault injection drill: this step fails after doing its work.
    #[arg(long)]
    pub fail_step: Option<String>,
}

fn common(data_dir: &Path, secret_file: &Path) -> CommonArgs {
    CommonArgs {
        database_url: None,
        data_dir: data_dir.to_path_buf(),
        metrics_listen: None,
        auth: AuthMode::Jwt,
        jwt_secret_file: Some(secret_file.to_path_buf()),
        oidc: OidcArgs::default(),
        tls_cert_file: None,
        tls_key_file: None,
        shutdown_deadline_seconds: 10,
        max_message_bytes: 8 * 1024 * 1024,
        max_concurrent_streams: 1024,
        max_connection_age_seconds: 0,
        log_format: LogFormat::Text,
    }
}

/// Writes a file only its owner can read (secrets and tokens).
fn write_private(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    Ok(())
}

fn micros(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
}

fn status_name(status: i32) -> String {
    pb::OperationStatus::try_from(status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("OPERATION_STATUS_")
                .to_string()
        })
        .unwrap_or_else(|_| status.to_string())
}

fn step_status_name(status: i32) -> String {
    pb::StepStatus::try_from(status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("STEP_STATUS_")
                .to_string()
        })
        .unwrap_or_else(|_| status.to_string())
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

/// One line per event on stderr, as it arrives.
struct Progress {
    step_started: std::collections::HashMap<String, i64>,
}

impl Progress {
    fn show(&mut self, e: &pb::OperationEvent) {
        let time = micros(e.time.as_ref()).unwrap_or(0);
        let pct = format!("[{:>3}%]", e.percent);
        let where_ = format!("{}/{}", e.phase, e.step);
        use pb::OperationEventType as T;
        match T::try_from(e.r#type) {
            Ok(T::Created) => eprintln!("{pct} operation {} created", e.operation_id),
            Ok(T::Started) => eprintln!("{pct} {}", e.message),
            Ok(T::StepStarted) => {
                self.step_started.insert(e.step.clone(), time);
                eprintln!("{pct} ▶ {where_}");
            }
            Ok(T::Progress) => eprintln!("         · {}", e.message),
            Ok(T::StepFinished) => {
                let took = self
                    .step_started
                    .get(&e.step)
                    .map(|s| format!(" ({} ms)", (time - s) / 1000))
                    .unwrap_or_default();
                let mark = match pb::StepStatus::try_from(e.step_status) {
                    Ok(pb::StepStatus::Passed) => "✔",
                    Ok(pb::StepStatus::Skipped) => "↷",
                    _ => "✘",
                };
                eprintln!(
                    "{pct} {mark} {where_} {}{took}",
                    step_status_name(e.step_status)
                );
            }
            Ok(T::Compensation) => eprintln!("         ↺ {}", e.message),
            Ok(T::CancelRequested) | Ok(T::Retried) => eprintln!("{pct} {}", e.message),
            Ok(T::Finished) => eprintln!("{pct} {}: {}", status_name(e.status), e.message),
            Ok(T::Heartbeat) | Ok(T::Unspecified) | Err(_) => {}
        }
    }
}

fn summary(op: &pb::Operation) -> String {
    let rows: Vec<[String; 5]> = op
        .steps
        .iter()
        .map(|s| {
            let took = match (micros(s.start_time.as_ref()), micros(s.end_time.as_ref())) {
                (Some(a), Some(b)) => format!("{} ms", (b - a) / 1000),
                _ => "-".into(),
            };
            [
                s.name.clone(),
                s.phase.clone(),
                step_status_name(s.status),
                took,
                truncate(&s.detail, 100),
            ]
        })
        .collect();
    let header = ["STEP", "PHASE", "STATUS", "TIME", "DETAIL"];
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 5]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 3 {
                let _ = write!(l, "{c:>w$}  ", w = widths[i]);
            } else if i == 4 {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    out
}

/// The run's artifact called `artifact` (empty: its model).
async fn download(
    registry: &mut capstan_client::RegistryClient,
    run_id: &str,
    artifact: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut s = registry
        .download_artifact(rpb::DownloadArtifactRequest {
            run_id: run_id.into(),
            artifact: artifact.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.next().await {
        if let Some(rpb::download_artifact_response::Payload::Chunk(c)) = m?.payload {
            out.extend_from_slice(&c);
        }
    }
    Ok(out)
}

/// Runs the demo; `Ok(true)` exactly when the operation SUCCEEDED.
pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let dir = args.data_dir.clone();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create --data-dir {}", dir.display()))?;
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let secret_file = dir.join("demo-jwt.secret");
    write_private(&secret_file, secret.as_bytes())?;

    let registry_args = registry_svc::app::RegistryArgs {
        listen: "127.0.0.1:0".parse()?,
        common: common(&dir, &secret_file),
        artifact_store: "fs".into(),
        reaper_interval_seconds: 5,
        // The demo deletes nothing: no purge, retention or collection is due in its life.
        deleted_run_grace_seconds: 7 * 24 * 3600,
        run_retention_days: 0,
        blob_gc_interval_seconds: 0,
        blob_gc_grace_seconds: 24 * 3600,
        alias_reads: registry_svc::app::AliasReads::Fresh,
        database_wait_seconds: 5,
    };
    let registry = registry_svc::app::start(
        &registry_args,
        ServeOptions::from_args(&registry_args.common)?,
    )
    .await
    .context("cannot start the embedded registry")?;
    let registry_url = format!("http://{}", registry.addr);
    let token_file = dir.join("demo-registry.token");
    write_private(
        &token_file,
        issue_hs256(secret.as_bytes(), "pipeline-svc", Role::Service, 3600)?.as_bytes(),
    )?;
    let pipeline_args = PipelineArgs {
        listen: "127.0.0.1:0".parse()?,
        common: common(&dir, &secret_file),
        registry_url: registry_url.clone(),
        registry_token_file: Some(token_file),
        direct_execution: true,
        watch_heartbeat_seconds: 15,
        lease_seconds: 30,
        worker_concurrency: 4,
        queue_workers: true,
        poll_interval_millis: 1000,
        max_attempts: 5,
        max_running_per_owner: 0,
        step_timeout_seconds: 0,
        operation_timeout_seconds: 0,
        operation_retention_days: 30,
        operation_purge_interval_seconds: 3600,
        operation_purge_batch: 500,
        replica_id: Some("demo".into()),
        knowledge_provider: KnowledgeProvider::Local,
        knowledge_url: None,
        knowledge_api_key_file: None,
        fail_step: args.fail_step.clone(),
        fail_step_times: None,
        abort_at_step: None,
        hang_step: None,
        database_wait_seconds: 5,
    };
    let pipeline = app::start(
        &pipeline_args,
        ServeOptions::from_args(&pipeline_args.common)?,
    )
    .await
    .context("cannot start the embedded pipeline")?;
    let pipeline_url = format!("http://{}", pipeline.addr);
    eprintln!(
        "registry-svc on {registry_url}, pipeline-svc on {pipeline_url} (SQLite and artifacts in {})",
        dir.display()
    );

    let outcome = drive(&args, &secret, &pipeline_url, &registry_url).await;
    pipeline.shutdown.cancel();
    registry.shutdown.cancel();
    for (name, task) in [("pipeline", pipeline.task), ("registry", registry.task)] {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::error!(server = name, error = %e, "server ended with an error")
            }
            Ok(Err(e)) => tracing::error!(server = name, error = %e, "server task failed"),
            Err(_) => tracing::error!(server = name, "server did not stop within 10 s"),
        }
    }
    outcome
}

async fn drive(
    args: &DemoArgs,
    secret: &str,
    pipeline_url: &str,
    registry_url: &str,
) -> anyhow::Result<bool> {
    let user = issue_hs256(secret.as_bytes(), "demo", Role::User, 3600)?;
    let channel = client::connect(pipeline_url, Some(&user)).await?;
    let request = pb::RunDemoRequest {
        demo: Some(pb::StartDemoRequest {
            request_id: String::new(),
            scenario: args.scenario.clone(),
            seed: Some(args.seed),
            series_count: args.series,
            days: args.days,
            horizon: args.horizon,
            execution_mode: pb::ExecutionMode::Unspecified as i32,
            alias: String::new(),
            timeout: None,
        }),
    };
    let started = Instant::now();
    let mut stream = PipelineServiceClient::new(channel.clone())
        .run_demo(request)
        .await
        .map_err(|s| anyhow::anyhow!("RunDemo refused: {}", s.message()))?
        .into_inner();
    let mut progress = Progress {
        step_started: Default::default(),
    };
    let mut first_event = None;
    let mut operation_id = None;
    while let Some(e) = stream.message().await? {
        first_event.get_or_insert_with(|| started.elapsed());
        operation_id.get_or_insert_with(|| e.operation_id.clone());
        progress.show(&e);
    }
    let elapsed = started.elapsed();
    let operation_id = operation_id.context("the demo stream ended without an event")?;
    let op = OperationsServiceClient::new(channel)
        .get_operation(pb::GetOperationRequest { operation_id })
        .await?
        .into_inner();

    println!();
    print!("{}", summary(&op));
    println!();
    println!(
        "Operation {} {} in {:.2} s (first event after {:.1} ms)",
        op.operation_id,
        status_name(op.status),
        elapsed.as_secs_f64(),
        first_event.unwrap_or_default().as_secs_f64() * 1000.0
    );
    if let Some(err) = &op.error {
        println!("Failed step: {} — {}", err.step, err.message);
        for c in &err.compensation_errors {
            println!("Compensation failed: {c}");
        }
    }
    if let Some(pb::operation_result::Result::Demo(d)) =
        op.result.as_ref().and_then(|r| r.result.as_ref())
    {
        if let Some(c) = &d.champion {
            println!(
                "Champion: {} (run {}) WAPE {:.4}, MAE {:.3}, bias {:+.4}; seasonal-naive baseline WAPE {:.4}",
                c.model_type, c.run_id, c.wape, c.mae, c.bias, d.baseline_wape
            );
        }
        if !d.alias_run_id.is_empty() {
            println!(
                "demo-production → run {} (revision {})",
                d.alias_run_id, d.alias_revision
            );
        }
        let admin = issue_hs256(secret.as_bytes(), "demo-cli", Role::Admin, 600)?;
        if !d.chart_run_id.is_empty() {
            let mut registry = client::registry_client(registry_url, Some(&admin), 8 << 20).await?;
            let svg = download(&mut registry, &d.chart_run_id, "chart").await?;
            let path = args.data_dir.join("showcase-chart.svg");
            std::fs::write(&path, svg)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "Chart: {} (registry artifact {})",
                path.display(),
                d.chart_artifact_uri
            );
        }
        if !d.briefing.is_empty() {
            let path = args.data_dir.join("showcase-briefing.md");
            std::fs::write(&path, &d.briefing)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("Briefing: {}", path.display());
        }
    }
    Ok(op.status == pb::OperationStatus::Succeeded as i32)
}
