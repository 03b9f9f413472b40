//! Chaos drills on the built binaries: a registry and two QUEUED pipeline replicas on a
//! private PostgreSQL cluster that the test starts itself (initdb + pg_ctl on a free port
//! in a temporary directory), so restarting it disturbs no other test.
//!
//! - the cluster is restarted (`pg_ctl restart -m fast`) while 12 QUEUED demos run: every
//!   one still SUCCEEDS by itself (steps retry by their policy, writes that lost their
//!   connection end the execution, and another claim resumes it from the last finished
//!   step).
//! - 8 demos on one alias while replicas of both services (two of each) are SIGKILLed and
//!   restarted at random moments: all 8 SUCCEED, the alias ends on a recorded champion,
//!   and its history holds each demo's swaps together, never interleaved with another's.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use capstan_client::{connect, AuthedChannel};
use capstan_proto::pipeline::v1::{
    self as pb, operations_service_client::OperationsServiceClient,
    pipeline_service_client::PipelineServiceClient,
};
use capstan_tests::{binary, Service};
use tempfile::TempDir;

/// Where Debian's PostgreSQL 15 keeps its server binaries; `CAPSTAN_PG_BIN` overrides it.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of this test's own; stopped (immediately) on drop.
struct PrivatePg {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    /// `runuser -u postgres --` when the test runs as root (initdb refuses root).
    as_user: Vec<String>,
}

impl PrivatePg {
    fn start() -> Self {
        let bin =
            std::env::var("CAPSTAN_PG_BIN").map_or_else(|_| PathBuf::from(PG_BIN), PathBuf::from);
        assert!(
            bin.join("initdb").exists() && bin.join("pg_ctl").exists(),
            "no initdb/pg_ctl in {}: install PostgreSQL's server package (`apt-get install \
             postgresql-15`) or point CAPSTAN_PG_BIN at its bin directory",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("capstan-chaos-pg-")
            .tempdir()
            .unwrap();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let as_user = if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(
                ok,
                "cannot hand {} to the postgres user",
                dir.path().display()
            );
            ["runuser", "-u", "postgres", "--"]
                .map(String::from)
                .to_vec()
        } else {
            Vec::new()
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self {
            dir,
            bin,
            port,
            as_user,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            pg.port,
            pg.dir.path().display()
        );
        pg.run(
            "pg_ctl",
            &[
                "-D",
                &pg.data(),
                "-o",
                &options,
                "-l",
                &pg.log(),
                "-w",
                "start",
            ],
        );
        for db in ["registry", "pipeline"] {
            pg.run(
                "createdb",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &pg.port.to_string(),
                    "-U",
                    "postgres",
                    db,
                ],
            );
        }
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The server's own log: its output must not go to pg_ctl's pipes, which would stay
    /// open as long as the server runs.
    fn log(&self) -> String {
        self.dir.path().join("postgres.log").display().to_string()
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        let mut cmd = match self.as_user.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Runs `tool` with `args`; panics with its output unless it succeeds.
    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl restart -m fast`: every connection is cut, the server comes back on the
    /// same port.
    fn restart(&self) {
        let (data, log) = (self.data(), self.log());
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-m", "fast", "-w", "restart"],
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

struct Replica {
    pipeline: PipelineServiceClient<AuthedChannel>,
    operations: OperationsServiceClient<AuthedChannel>,
}

async fn replica(service: &Service) -> Replica {
    let channel = connect(&service.url(), None).await.unwrap();
    Replica {
        pipeline: PipelineServiceClient::new(channel.clone()),
        operations: OperationsServiceClient::new(channel),
    }
}

fn start_pipeline(pg: &PrivatePg, registry: &Service, dir: &Path, name: &str) -> Service {
    let data = dir.join(name);
    Service::start(
        &binary("pipeline-svc"),
        &[
            "--auth",
            "disabled",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--database-url",
            &pg.url("pipeline"),
            "--registry-url",
            &registry.url(),
            "--replica-id",
            name,
            "--direct-execution",
            "false",
            "--lease-seconds",
            "2",
            "--poll-interval-millis",
            "200",
            "--database-wait-seconds",
            "30",
        ],
        &[],
        dir.join(format!("{name}.log")),
    )
    .unwrap()
}

fn small_demo(i: usize) -> pb::StartDemoRequest {
    pb::StartDemoRequest {
        request_id: format!("chaos-{i}"),
        scenario: "showcase_rich".into(),
        seed: Some(100 + i as u64),
        series_count: 3,
        days: 120,
        horizon: 7,
        execution_mode: pb::ExecutionMode::Queued as i32,
        // Four aliases: three demos queue on each, four run side by side.
        alias: format!("chaos-{}", i % 4),
        timeout: None,
    }
}

/// The operation as it is now, asking `replicas` in turn (one may be between
/// connections while the database restarts).
async fn read(replicas: &mut [Replica], id: &str) -> Option<pb::Operation> {
    for r in replicas.iter_mut() {
        let got = r
            .operations
            .get_operation(pb::GetOperationRequest {
                operation_id: id.into(),
            })
            .await;
        if let Ok(op) = got {
            return Some(op.into_inner());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_demos_survive_a_postgres_restart() {
    let pg = PrivatePg::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = Service::start(
        &binary("registry-svc"),
        &[
            "--auth",
            "disabled",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("registry").to_str().unwrap(),
            "--database-url",
            &pg.url("registry"),
            "--database-wait-seconds",
            "30",
        ],
        &[],
        dir.path().join("registry.log"),
    )
    .unwrap();
    let a = start_pipeline(&pg, &registry, dir.path(), "chaos-a");
    let b = start_pipeline(&pg, &registry, dir.path(), "chaos-b");
    let mut replicas = [replica(&a).await, replica(&b).await];

    let mut ids = Vec::new();
    for i in 0..12 {
        let op = replicas[i % 2]
            .pipeline
            .start_demo(small_demo(i))
            .await
            .expect("StartDemo")
            .into_inner();
        ids.push(op.operation_id);
    }
    // Mid-run: some demos have started, and some have yet to finish.
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (mut started, mut ended) = (0, 0);
        for id in &ids {
            if let Some(op) = read(&mut replicas, id).await {
                started += usize::from(op.status != pb::OperationStatus::Pending as i32);
                ended += usize::from(op.status >= pb::OperationStatus::Succeeded as i32);
            }
        }
        if started >= 3 {
            assert!(ended < ids.len(), "every demo ended before the restart");
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the demos did not start in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.restart();

    let until = tokio::time::Instant::now() + Duration::from_secs(100);
    let mut last = Vec::new();
    loop {
        last.clear();
        for id in &ids {
            last.push(read(&mut replicas, id).await);
        }
        let done = last.iter().all(|op| {
            op.as_ref()
                .is_some_and(|o| o.status >= pb::OperationStatus::Succeeded as i32)
        });
        if done || tokio::time::Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let failures: Vec<String> = last
        .iter()
        .zip(&ids)
        .filter(|(op, _)| {
            op.as_ref()
                .is_none_or(|o| o.status != pb::OperationStatus::Succeeded as i32)
        })
        .map(|(op, id)| match op {
            Some(o) => format!("{id}: {} {:?} ({})", o.status, o.error, o.message),
            None => format!("{id}: unreadable"),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "every demo succeeds across the restart; these did not:\n{}\n--- chaos-a log tail\n{}\n--- chaos-b log tail\n{}",
        failures.join("\n"),
        tail(&a.log_text()),
        tail(&b.log_text())
    );
    let resumed = last
        .iter()
        .flatten()
        .filter(|o| o.attempts > 1 || o.steps.iter().any(|s| s.attempt > 1))
        .count();
    eprintln!(
        "{resumed} of {} demos ran a step again or were resumed",
        ids.len()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A number below `n`, good enough for picking a victim and a moment.
fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n)) as u64
}

/// One instance on a fixed port, restarted with the same flags after a SIGKILL.
struct Instance {
    bin: &'static str,
    args: Vec<String>,
    log: PathBuf,
    service: Service,
    restarts: usize,
}

impl Instance {
    fn start(bin: &'static str, args: Vec<String>, log: PathBuf) -> Self {
        let service = Self::spawn(bin, &args, &log, 0);
        Self {
            bin,
            args,
            log,
            service,
            restarts: 0,
        }
    }

    fn spawn(bin: &str, args: &[String], log: &Path, n: usize) -> Service {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Service::start(
            &binary(bin),
            &args,
            &[],
            log.with_extension(format!("{n}.log")),
        )
        .unwrap()
    }

    fn kill_and_restart(&mut self) {
        self.service.child.kill().unwrap();
        self.service.child.wait().unwrap();
        self.restarts += 1;
        self.service = Self::spawn(self.bin, &self.args, &self.log, self.restarts);
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alias_keeps_its_order_while_replicas_are_killed() {
    const ALIAS: &str = "chaos-one";
    let pg = PrivatePg::start();
    let dir = tempfile::tempdir().unwrap();
    let registry_ports = [free_port(), free_port()];
    let registry_urls = registry_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let artifacts = dir.path().join("registry");
    let mut instances = Vec::new();
    for (i, port) in registry_ports.iter().enumerate() {
        instances.push(Instance::start(
            "registry-svc",
            strings(&[
                "--auth",
                "disabled",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                artifacts.to_str().unwrap(),
                "--database-url",
                &pg.url("registry"),
                "--database-wait-seconds",
                "30",
            ]),
            dir.path().join(format!("registry-{i}")),
        ));
    }
    let pipeline_ports = [free_port(), free_port()];
    for (i, port) in pipeline_ports.iter().enumerate() {
        let name = format!("kill-{i}");
        instances.push(Instance::start(
            "pipeline-svc",
            strings(&[
                "--auth",
                "disabled",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                dir.path().join(&name).to_str().unwrap(),
                "--database-url",
                &pg.url("pipeline"),
                "--registry-url",
                &registry_urls,
                "--replica-id",
                &name,
                "--direct-execution",
                "false",
                "--lease-seconds",
                "2",
                "--poll-interval-millis",
                "200",
                "--database-wait-seconds",
                "30",
            ]),
            dir.path().join(&name),
        ));
    }
    let pipeline_urls = pipeline_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    // One channel over both replicas: a call to a killed one goes to the other.
    let channel = connect(&pipeline_urls, None).await.unwrap();
    let mut pipeline = PipelineServiceClient::new(channel.clone());
    let mut replicas = [Replica {
        pipeline: PipelineServiceClient::new(channel.clone()),
        operations: OperationsServiceClient::new(channel),
    }];
    let mut ids = Vec::new();
    for i in 0..8 {
        let mut request = small_demo(i);
        request.request_id = format!("one-alias-{i}");
        request.alias = ALIAS.into();
        let op = pipeline
            .start_demo(request)
            .await
            .expect("StartDemo")
            .into_inner();
        ids.push(op.operation_id);
    }

    let until = tokio::time::Instant::now() + Duration::from_secs(100);
    let mut kills = 0;
    let mut last = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(800 + random_below(1700))).await;
        if kills < 6 {
            let victim = random_below(instances.len() as u64) as usize;
            instances[victim].kill_and_restart();
            kills += 1;
        }
        last.clear();
        for id in &ids {
            last.push(read(&mut replicas, id).await);
        }
        let done = last.iter().all(|op| {
            op.as_ref()
                .is_some_and(|o| o.status >= pb::OperationStatus::Succeeded as i32)
        });
        if (done && kills >= 6) || tokio::time::Instant::now() >= until {
            break;
        }
    }
    let ops: Vec<pb::Operation> = last.into_iter().flatten().collect();
    let failures: Vec<String> = ops
        .iter()
        .filter(|o| o.status != pb::OperationStatus::Succeeded as i32)
        .map(|o| {
            format!(
                "{}: {} {:?} ({})",
                o.operation_id, o.status, o.error, o.message
            )
        })
        .collect();
    assert!(
        ops.len() == ids.len() && failures.is_empty(),
        "all 8 demos succeed through {kills} kills; these did not:\n{}",
        failures.join("\n")
    );

    let demos: Vec<pb::DemoResult> = ops
        .iter()
        .map(|o| match o.result.as_ref().and_then(|r| r.result.clone()) {
            Some(pb::operation_result::Result::Demo(d)) => d,
            other => panic!("{}: no demo result: {other:?}", o.operation_id),
        })
        .collect();
    let owner_of = |run: &str| {
        demos.iter().position(|d| {
            d.challenger_run_id == run || d.candidates.iter().any(|c| c.run_id == run)
        })
    };
    let mut registry = capstan_client::registry_client(&registry_urls, None, 8 << 20)
        .await
        .unwrap();
    let alias = registry
        .get_alias(capstan_proto::registry::v1::GetAliasRequest {
            alias: ALIAS.into(),
            ..Default::default()
        })
        .await
        .expect("GetAlias")
        .into_inner();
    assert!(
        demos.iter().any(|d| d.winning_run_id == alias.run_id),
        "the alias ends on a recorded champion, not {alias:?}"
    );
    let history = registry
        .list_alias_history(capstan_proto::registry::v1::ListAliasHistoryRequest {
            alias: ALIAS.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("ListAliasHistory")
        .into_inner()
        .entries;
    // Oldest first, each entry named by the demo whose run it points at.
    let mut order: Vec<usize> = Vec::new();
    for entry in history.iter().rev() {
        let demo = owner_of(&entry.run_id)
            .unwrap_or_else(|| panic!("r{} points at no demo's run: {entry:?}", entry.revision));
        if order.last() != Some(&demo) {
            order.push(demo);
        }
    }
    let mut seen = order.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        order.len(),
        "a demo's swaps are interleaved with another's: {order:?}"
    );
    assert_eq!(seen.len(), 8, "every demo swapped the alias: {order:?}");
    let last_demo = order.last().copied().unwrap();
    assert_eq!(
        alias.run_id, demos[last_demo].winning_run_id,
        "the last demo's champion holds the alias"
    );
    let restarts: usize = instances.iter().map(|i| i.restarts).sum();
    assert_eq!(restarts, kills);
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
