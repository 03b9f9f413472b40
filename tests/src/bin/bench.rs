//! Load generator for the release registry-svc binary (run by hand, not in CI).
//!
//! For each backend it starts `target/release/registry-svc` with auth on against a fresh
//! SQLite file or a fresh Postgres database, then measures GetAlias, SetAlias, the
//! CreateRun→UpdateRun lifecycle and artifact upload/download (throughput, latency
//! percentiles, server RSS), prints a table and writes JSON for `tests/bench/report.py`.
//! Traffic goes to 127.0.0.1 only and every loop is bounded by time and count.

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use capstan_client::{registry_client, RegistryClient};
use capstan_proto::registry::v1::{self as pb};
use capstan_server::{
    auth::{issue_hs256, Role},
    testing::{self, TestDb},
};
use capstan_tests::{
    binary,
    runs::{create_running, servable_run, upload},
    server_flags, Service,
};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(about = "Capstan registry benchmark (release build, loopback only)")]
struct Args {
    /// Which store the server runs on.
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendChoice,
    /// Where the JSON results go.
    #[arg(long, default_value = "docs/bench-capstan.json")]
    out: PathBuf,
    /// Measured time of each request phase.
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Unmeasured time before each request phase.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// Artifact sizes to upload and download, in MiB (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "16,256")]
    artifact_mib: Vec<usize>,
    /// Upload/download rounds per artifact size (each with distinct content).
    #[arg(long, default_value_t = 3)]
    artifact_rounds: usize,
    /// Upload chunk size in KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    /// What to measure (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "requests,artifacts"
    )]
    phases: Vec<PhaseChoice>,
    /// More flags for the registry server (each as `--server-arg=--flag=value`).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Concurrent workers sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 8)]
    workers_per_connection: usize,
    /// Internal: serve only the gRPC health service (the bare-transport peer) and exit
    /// on SIGTERM.
    #[arg(long, hide = true)]
    serve_bare: bool,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum PhaseChoice {
    Requests,
    Artifacts,
}

/// Safety bound on operations per worker and phase, on top of the time bound.
const MAX_OPS_PER_WORKER: u64 = 10_000_000;
const MIB: usize = 1 << 20;
const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_bare {
        return serve_bare().await;
    }
    ensure!(args.duration_secs > 0, "--duration-secs must be positive");
    ensure!(
        args.chunk_kib > 0 && args.chunk_kib * 1024 <= 4 * MIB,
        "--chunk-kib must be 1..=4096 (the server's default message limit is 8 MiB)"
    );
    ensure!(
        args.workers_per_connection > 0,
        "--workers-per-connection must be positive"
    );
    ensure!(
        args.artifact_rounds > 0,
        "--artifact-rounds must be positive"
    );
    let bin = binary("registry-svc");
    eprintln!("server binary: {}", bin.display());
    if !bin.to_string_lossy().contains("/release/") {
        eprintln!(
            "WARNING: {} is not a release build; run the bench with --release",
            bin.display()
        );
    }

    let backends: &[&str] = match args.backend {
        BackendChoice::Sqlite => &["sqlite"],
        BackendChoice::Postgres => &["postgres"],
        BackendChoice::Both => &["sqlite", "postgres"],
    };
    let mut results = serde_json::Map::new();
    let mut errors = 0;
    let transport = if args.phases.contains(&PhaseChoice::Requests) {
        eprintln!("\n=== bare tonic transport (the machine's yardstick) ===");
        let t = transport_phases(&args).await?;
        errors += t
            .values()
            .map(|v| v["errors"].as_u64().unwrap_or(0))
            .sum::<u64>();
        Some(t)
    } else {
        None
    };
    for &backend in backends {
        let db = match backend {
            "sqlite" => TestDb::sqlite(),
            _ => TestDb::postgres().await,
        };
        eprintln!("\n=== {backend} ===");
        let result = bench_backend(&args, &bin, &db).await?;
        errors += result["ops"].as_object().map_or(0, |o| {
            o.values().map(|v| v["errors"].as_u64().unwrap_or(0)).sum()
        });
        print_table(backend, &result);
        results.insert(backend.to_string(), result);
        // The artifact phase leaves gigabytes for the kernel to write back; the next
        // backend (Postgres fsyncs every commit) must not start on a disk still busy.
        let synced = std::process::Command::new("sync").status();
        if !synced.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("WARNING: `sync` failed ({synced:?}); the next backend may meet a busy disk");
        }
    }

    let out = json!({
        "tool": "capstan-bench",
        "capstan_version": env!("CARGO_PKG_VERSION"),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "host": host_info(),
        "settings": {
            "duration_secs": args.duration_secs,
            "warmup_secs": args.warmup_secs,
            "artifact_mib": args.artifact_mib,
            "artifact_rounds": args.artifact_rounds,
            "chunk_kib": args.chunk_kib,
            "workers_per_connection": args.workers_per_connection,
            "server_args": args.server_arg,
            "server_binary": bin.display().to_string(),
        },
        "transport": transport,
        "backends": results,
    });
    capstan_tests::report::write_results(&args.out, &out)?;
    ensure!(
        errors == 0,
        "{errors} requests failed during measurement (see the `errors` fields)"
    );
    Ok(())
}

struct Bench {
    url: String,
    token: String,
    pid: u32,
    /// The server's data directory (where its filesystem blobs go).
    data_dir: PathBuf,
}

impl Bench {
    async fn client(&self) -> anyhow::Result<RegistryClient> {
        Ok(registry_client(&self.url, Some(&self.token), MAX_MESSAGE_BYTES).await?)
    }

    /// One connection per `per_conn` workers.
    async fn clients(
        &self,
        workers: usize,
        per_conn: usize,
    ) -> anyhow::Result<Vec<RegistryClient>> {
        let mut out = Vec::new();
        for _ in 0..workers.div_ceil(per_conn) {
            out.push(self.client().await?);
        }
        Ok(out)
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        proc_status_kib(self.pid, field)
    }
}

async fn bench_backend(args: &Args, bin: &Path, db: &TestDb) -> anyhow::Result<Value> {
    let dir = db.data_dir();
    let (secret_path, secret) = testing::jwt_secret(&dir);
    let data_dir = dir.join("data");
    let mut server_args = server_flags(&data_dir, &db.url, &secret_path)?;
    server_args.extend(args.server_arg.iter().map(String::as_str));
    let mut svc = Service::start(
        bin,
        &server_args,
        // Pinned so that a RUST_LOG in the caller's environment cannot change the cost.
        &[("RUST_LOG", "info")],
        dir.join("registry.log"),
    )?;
    let bench = Bench {
        url: svc.url(),
        token: issue_hs256(&secret, "bench", Role::Admin, 24 * 3600)?,
        pid: svc.pid(),
        data_dir: data_dir.clone(),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = bench.status_kib("VmRSS")?;
    eprintln!(
        "server pid {} at {}; idle RSS: {:.1} MiB",
        bench.pid,
        bench.url,
        kib_mib(idle_rss)
    );
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let ops = if args.phases.contains(&PhaseChoice::Requests) {
        request_phases(args, &bench).await?
    } else {
        serde_json::Map::new()
    };
    let mut artifacts = Vec::new();
    if args.phases.contains(&PhaseChoice::Artifacts) {
        for &mib in &args.artifact_mib {
            artifacts
                .push(bench_artifacts(&bench, mib, args.artifact_rounds, args.chunk_kib).await?);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = bench.status_kib("VmRSS")?;
    let status = svc.terminate(Duration::from_secs(30))?;
    ensure!(
        status.success(),
        "registry-svc exited with {status}; log:\n{}",
        svc.log_text()
    );
    Ok(json!({
        "idle_rss_mib": kib_mib(idle_rss),
        "rss_after_mib": kib_mib(rss_after),
        "loadavg_before": load_before.trim(),
        "ops": ops,
        "artifacts": artifacts,
    }))
}

/// The bare-transport peer: a tonic server with the same HTTP/2 settings as the services
/// (TCP_NODELAY, windows) and only the health service, so that its Check is gRPC and
/// nothing else. It prints the listen line `capstan_tests::Service` waits for.
async fn serve_bare() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    eprintln!(
        "{}",
        json!({"message": "gRPC listening", "listen": addr.to_string()})
    );
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .add_service(health)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            capstan_server::serve::signal(),
        )
        .await?;
    Ok(())
}

/// Health Check against the bare peer at 1, 16 and 64 concurrent: what gRPC alone costs
/// on this machine in this session, to read the registry's figures against.
async fn transport_phases(args: &Args) -> anyhow::Result<serde_json::Map<String, Value>> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let dir = tempfile::tempdir()?;
    let mut svc = Service::start(
        &std::env::current_exe()?,
        &["--serve-bare"],
        &[],
        dir.path().join("bare.log"),
    )?;
    let mut phases = Phases::new(svc.pid(), args);
    for c in [1usize, 16, 64] {
        let mut clients = Vec::new();
        for _ in 0..c.div_ceil(args.workers_per_connection) {
            let channel = capstan_client::endpoint(&svc.url())?.connect().await?;
            clients.push(HealthClient::new(channel));
        }
        phases
            .run(
                format!("bare_check_c{c}"),
                &clients,
                c,
                |mut client, _, _| {
                    Box::pin(
                        async move { client.check(HealthCheckRequest::default()).await.map(drop) },
                    )
                },
            )
            .await;
    }
    let status = svc.terminate(Duration::from_secs(10))?;
    ensure!(status.success(), "bare transport peer exited with {status}");
    Ok(phases.ops)
}

/// GetAlias of one hot alias at 1, 16 and 64 concurrent, SetAlias, GetAlias of 16
/// distinct aliases and the run lifecycle at 16.
async fn request_phases(
    args: &Args,
    bench: &Bench,
) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut setup = bench.client().await?;
    let run_a = servable_run(&mut setup, "bench-a").await?;
    let run_b = servable_run(&mut setup, "bench-b").await?;
    setup
        .set_alias(pb::SetAliasRequest {
            alias: "bench-get".into(),
            run_id: run_a.clone(),
            ..Default::default()
        })
        .await?;

    let per_conn = args.workers_per_connection;
    let mut phases = Phases::new(bench.pid, args);

    for c in [1, 16, 64] {
        let clients = bench.clients(c, per_conn).await?;
        phases
            .run(
                format!("get_alias_c{c}"),
                &clients,
                c,
                |mut client, _, _| {
                    Box::pin(async move {
                        client
                            .get_alias(pb::GetAliasRequest {
                                alias: "bench-get".into(),
                                ..Default::default()
                            })
                            .await
                            .map(drop)
                    })
                },
            )
            .await;
    }

    let runs = Arc::new([run_a, run_b]);
    let c = 16;
    let clients = bench.clients(c, per_conn).await?;
    phases
        .run(
            "set_alias_c16",
            &clients,
            c,
            move |mut client, worker, i| {
                let runs = runs.clone();
                Box::pin(async move {
                    client
                        .set_alias(pb::SetAliasRequest {
                            alias: format!("bench-set-{worker}"),
                            run_id: runs[(i % 2) as usize].clone(),
                            reason: "bench".into(),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                })
            },
        )
        .await;

    // Each worker reads the alias it wrote above: no two concurrent reads of one alias.
    phases
        .run(
            "get_alias_distinct_c16",
            &clients,
            c,
            |mut client, worker, _| {
                Box::pin(async move {
                    client
                        .get_alias(pb::GetAliasRequest {
                            alias: format!("bench-set-{worker}"),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                })
            },
        )
        .await;

    phases
        .run("lifecycle_c16", &clients, c, |mut client, worker, i| {
            Box::pin(async move {
                let run = client
                    .create_run(pb::CreateRunRequest {
                        name: format!("lifecycle-{worker}-{i}"),
                        model_type: "seasonal_naive".into(),
                        status: pb::RunStatus::Running as i32,
                        params: [("season".to_string(), "7".to_string())].into(),
                        metrics: [("wape".to_string(), 0.2)].into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                client
                    .update_run(pb::UpdateRunRequest {
                        run: Some(pb::Run {
                            run_id: run.run_id,
                            status: pb::RunStatus::Succeeded as i32,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["status".into()],
                        }),
                    })
                    .await
                    .map(drop)
            })
        })
        .await;
    Ok(phases.ops)
}

/// Uploads and downloads `rounds` distinct artifacts of `mib` MiB; measures MB/s and the
/// server's peak RSS over its RSS just before (VmHWM, reset through clear_refs).
async fn bench_artifacts(
    bench: &Bench,
    mib: usize,
    rounds: usize,
    chunk_kib: usize,
) -> anyhow::Result<Value> {
    let size = mib * MIB;
    let mut c = bench.client().await?;
    let base = pseudo_random(size);
    let rss_before = bench.status_kib("VmRSS")?;
    let hwm_reset = reset_hwm(bench.pid);
    let (mut up, mut down, mut disk) = (Vec::new(), Vec::new(), Vec::new());
    let (mut up_peak, mut runs) = (0, Vec::new());
    // CPU seconds (server, client) spent inside the timed transfers.
    let (mut up_cpu, mut down_cpu) = (Some((0.0, 0.0)), Some((0.0, 0.0)));
    for round in 0..rounds {
        // A distinct prefix per round: identical content would be deduplicated, not stored.
        let mut content = base.clone();
        content[..8].copy_from_slice(&(round as u64 + 1).to_le_bytes());
        let content = Bytes::from(content);
        let sha = hex::encode(Sha256::digest(&content));
        // The disk's yardstick, just before each upload: the same bytes written to the same
        // filesystem and fsynced, as the server must before it answers.
        disk.push(write_and_sync(
            &bench.data_dir.join("disk-yardstick"),
            &content,
        )?);
        let run = create_running(&mut c, &format!("artifact-{mib}-{round}")).await?;
        let (cpu0, start) = (cpu_pair(bench.pid), Instant::now());
        let resp = upload(&mut c, &run, content, chunk_kib * 1024, Some(sha.clone())).await?;
        up.push(start.elapsed());
        up_cpu = add_cpu(up_cpu, cpu0, cpu_pair(bench.pid));
        ensure!(
            resp.sha256 == sha && !resp.deduplicated,
            "upload round {round}: unexpected response {resp:?}"
        );
        up_peak = up_peak.max(bench.status_kib("VmHWM")?);
        runs.push(run);
    }
    let rss_mid = bench.status_kib("VmRSS")?;
    reset_hwm(bench.pid);
    for run in &runs {
        let (cpu0, start) = (cpu_pair(bench.pid), Instant::now());
        let got = download(&mut c, run).await?;
        down.push(start.elapsed());
        down_cpu = add_cpu(down_cpu, cpu0, cpu_pair(bench.pid));
        ensure!(got == size as u64, "downloaded {got} bytes of {size}");
    }
    let down_peak = bench.status_kib("VmHWM")?;
    let mbps = |d: &[Duration]| -> Vec<f64> {
        d.iter()
            .map(|d| size as f64 / 1e6 / d.as_secs_f64())
            .collect()
    };
    let (up_mbps, down_mbps, disk_mbps) = (mbps(&up), mbps(&down), mbps(&disk));
    let growth = up_peak.max(down_peak).saturating_sub(rss_before);
    let gb = (size * rounds) as f64 / 1e9;
    eprintln!(
        "artifact {mib} MiB: upload {:.0} MB/s, download {:.0} MB/s, disk write+fsync {:.0} MB/s (medians of {rounds}); server RSS {:.1} MiB before, peak +{:.1} MiB",
        median(&up_mbps),
        median(&down_mbps),
        median(&disk_mbps),
        kib_mib(rss_before),
        kib_mib(growth)
    );
    Ok(json!({
        "size_mib": mib,
        "rounds": rounds,
        "chunk_kib": chunk_kib,
        "upload_mb_s": median(&up_mbps),
        "download_mb_s": median(&down_mbps),
        "upload_mb_s_all": up_mbps,
        "download_mb_s_all": down_mbps,
        "disk_fsync_mb_s": median(&disk_mbps),
        "disk_fsync_mb_s_all": disk_mbps,
        "rss_before_mib": kib_mib(rss_before),
        "rss_after_upload_mib": kib_mib(rss_mid),
        "upload_peak_rss_mib": kib_mib(up_peak),
        "download_peak_rss_mib": kib_mib(down_peak),
        "rss_growth_mib": kib_mib(growth),
        "peak_is_per_phase": hwm_reset,
        "upload_server_cpu_s_per_gb": up_cpu.map(|c| c.0 / gb),
        "upload_client_cpu_s_per_gb": up_cpu.map(|c| c.1 / gb),
        "download_server_cpu_s_per_gb": down_cpu.map(|c| c.0 / gb),
        "download_client_cpu_s_per_gb": down_cpu.map(|c| c.1 / gb),
    }))
}

/// Writes `content` to `path`, fsyncs it and removes it; how long the write and sync took.
fn write_and_sync(path: &Path, content: &[u8]) -> anyhow::Result<Duration> {
    use std::io::Write;
    let start = Instant::now();
    let mut f = std::fs::File::create(path)?;
    f.write_all(content)?;
    f.sync_all()?;
    let took = start.elapsed();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(took)
}

/// `total` plus the CPU used between `before` and `after`; `None` once a reading failed.
fn add_cpu(
    total: Option<(f64, f64)>,
    before: Option<(f64, f64)>,
    after: Option<(f64, f64)>,
) -> Option<(f64, f64)> {
    let (t, b, a) = (total?, before?, after?);
    Some((t.0 + a.0 - b.0, t.1 + a.1 - b.1))
}

/// Bytes received; the stream must start with metadata naming the same size.
async fn download(c: &mut RegistryClient, run_id: &str) -> anyhow::Result<u64> {
    use pb::download_artifact_response::Payload;
    let mut stream = c
        .download_artifact(pb::DownloadArtifactRequest {
            run_id: run_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut expected = None;
    let mut got = 0u64;
    while let Some(msg) = stream.next().await {
        match msg?.payload {
            Some(Payload::Metadata(m)) => expected = Some(m.size_bytes as u64),
            Some(Payload::Chunk(b)) => got += b.len() as u64,
            None => bail!("empty download message"),
        }
    }
    ensure!(
        expected == Some(got),
        "metadata said {expected:?} bytes, received {got}"
    );
    Ok(got)
}

/// Incompressible filler (xorshift64), fast enough not to matter next to the transfer.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

type OpFuture = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

struct Phase {
    concurrency: usize,
    connections: usize,
    duration: Duration,
    /// Latencies (ns) of operations started after the warm-up and finished in the window.
    latencies: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    /// CPU time (user + system) over the measured window: server process, this process.
    cpu: Option<(f64, f64)>,
}

impl Phase {
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.duration.as_secs_f64()
    }

    fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i] as f64 / 1e3
    }

    fn to_json(&self) -> Value {
        let mean = self.latencies.iter().sum::<u64>() as f64 / self.latencies.len().max(1) as f64;
        json!({
            "concurrency": self.concurrency,
            "connections": self.connections,
            "duration_secs": self.duration.as_secs_f64(),
            "ops": self.latencies.len(),
            "throughput_per_s": self.throughput(),
            "p50_us": self.percentile_us(0.50),
            "p90_us": self.percentile_us(0.90),
            "p99_us": self.percentile_us(0.99),
            "max_us": self.latencies.last().map_or(f64::NAN, |&n| n as f64 / 1e3),
            "mean_us": mean / 1e3,
            "errors": self.errors,
            "first_error": self.first_error,
            "server_cpu_s": self.cpu.map(|c| c.0),
            "client_cpu_s": self.cpu.map(|c| c.1),
            "server_cpu_us_per_op": self.cpu.map(|c| per_op_us(c.0, self.latencies.len())),
            "client_cpu_us_per_op": self.cpu.map(|c| per_op_us(c.1, self.latencies.len())),
        })
    }
}

fn per_op_us(cpu_s: f64, ops: usize) -> f64 {
    cpu_s * 1e6 / ops.max(1) as f64
}

/// Runs `concurrency` closed-loop workers over `clients` for `warmup + duration`; also
/// measures the CPU time `server` and this process use in the measured window.
async fn load<C, F>(
    server: u32,
    clients: &[C],
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> Phase
where
    C: Clone + Send + 'static,
    F: Fn(C, usize, u64) -> OpFuture + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let (measure_from, end) = (start + warmup, start + warmup + duration);
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = cpu_pair(server);
        tokio::time::sleep_until(end.into()).await;
        let after = cpu_pair(server);
        Some((after?.0 - before?.0, after?.1 - before?.1))
    });
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = clients[worker % clients.len()].clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let (mut errors, mut first_error) = (0u64, None);
            for i in 0..MAX_OPS_PER_WORKER {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let res = op(client.clone(), worker, i).await;
                let t1 = Instant::now();
                if t0 < measure_from || t1 > end {
                    continue;
                }
                match res {
                    Ok(()) => lat.push((t1 - t0).as_nanos() as u64),
                    Err(s) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                    }
                }
            }
            (lat, errors, first_error)
        }));
    }
    let mut phase = Phase {
        concurrency,
        connections: clients.len(),
        duration,
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
        cpu: None,
    };
    for t in tasks {
        match t.await {
            Ok((lat, errors, first)) => {
                phase.latencies.extend(lat);
                phase.errors += errors;
                if phase.first_error.is_none() {
                    phase.first_error = first;
                }
            }
            Err(e) => {
                phase.errors += 1;
                phase
                    .first_error
                    .get_or_insert_with(|| format!("worker panicked: {e}"));
            }
        }
    }
    phase.latencies.sort_unstable();
    phase.cpu = cpu.await.ok().flatten();
    phase
}

/// Measured phases against one server, and their results by name.
struct Phases {
    server: u32,
    warmup: Duration,
    duration: Duration,
    ops: serde_json::Map<String, Value>,
}

impl Phases {
    fn new(server: u32, args: &Args) -> Self {
        Self {
            server,
            warmup: Duration::from_secs(args.warmup_secs),
            duration: Duration::from_secs(args.duration_secs),
            ops: serde_json::Map::new(),
        }
    }

    /// Runs one phase (see [`load`]), prints it and keeps it under `name`.
    async fn run<C, F>(&mut self, name: impl Into<String>, clients: &[C], concurrency: usize, op: F)
    where
        C: Clone + Send + 'static,
        F: Fn(C, usize, u64) -> OpFuture + Send + Sync + 'static,
    {
        let p = load(
            self.server,
            clients,
            concurrency,
            self.warmup,
            self.duration,
            op,
        )
        .await;
        let name = name.into();
        report_phase(&name, &p);
        self.ops.insert(name, p.to_json());
    }
}

fn report_phase(name: &str, p: &Phase) {
    eprintln!(
        "{name:<22} c={:<3} {:>9.0}/s  p50 {:>8.0} µs  p99 {:>8.0} µs  errors {}{}",
        p.concurrency,
        p.throughput(),
        p.percentile_us(0.5),
        p.percentile_us(0.99),
        p.errors,
        p.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}

fn print_table(backend: &str, r: &Value) {
    println!(
        "\n{backend}: idle RSS {:.1} MiB",
        r["idle_rss_mib"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "{:<22} {:>5} {:>11} {:>10} {:>10} {:>7}",
        "operation", "conc", "ops/s", "p50 µs", "p99 µs", "errors"
    );
    const ORDER: [&str; 6] = [
        "get_alias_c1",
        "get_alias_c16",
        "get_alias_c64",
        "set_alias_c16",
        "get_alias_distinct_c16",
        "lifecycle_c16",
    ];
    for name in ORDER {
        if let Some(o) = r["ops"].get(name) {
            println!(
                "{:<22} {:>5} {:>11.0} {:>10.0} {:>10.0} {:>7}",
                name,
                o["concurrency"].to_string(),
                o["throughput_per_s"].as_f64().unwrap_or(f64::NAN),
                o["p50_us"].as_f64().unwrap_or(f64::NAN),
                o["p99_us"].as_f64().unwrap_or(f64::NAN),
                o["errors"].to_string()
            );
        }
    }
    for a in r["artifacts"].as_array().into_iter().flatten() {
        println!(
            "artifact {:>4} MiB: upload {:>6.0} MB/s  download {:>6.0} MB/s  server RSS growth {:.1} MiB",
            a["size_mib"],
            a["upload_mb_s"].as_f64().unwrap_or(f64::NAN),
            a["download_mb_s"].as_f64().unwrap_or(f64::NAN),
            a["rss_growth_mib"].as_f64().unwrap_or(f64::NAN)
        );
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// CPU seconds (user + system, finished threads included) of `pid` from /proc/<pid>/stat.
fn cpu_secs(pid: &str) -> anyhow::Result<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may contain spaces: utime and stime are the
    // 12th and 13th of them.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.len() > 12, "short /proc/{pid}/stat");
    Ok((f[11].parse::<f64>()? + f[12].parse::<f64>()?) / ticks)
}

/// (server, this process) CPU seconds; `None` (announced) when /proc cannot say.
fn cpu_pair(server: u32) -> Option<(f64, f64)> {
    match (cpu_secs(&server.to_string()), cpu_secs("self")) {
        (Ok(s), Ok(c)) => Some((s, c)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot read CPU time: error = {e}");
            None
        }
    }
}

/// Resets the process's peak RSS (VmHWM), so that the next reading is the peak of one phase.
fn reset_hwm(pid: u32) -> bool {
    match std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        Ok(()) => true,
        Err(e) => {
            eprintln!("cannot reset VmHWM (peak is since start): error = {e}");
            false
        }
    }
}

fn kib_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

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
        "mem_total": std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| m.lines().next().map(str::to_string)),
    })
}
