//! The production topology on one machine — `deploy/local-topology.sh`: two registry-svc
//! and two pipeline-svc processes on one Postgres, auth on, each started with exactly the
//! prod manifests' environment — under what a cluster does to it:
//!
//! - a registry replica is SIGKILLed while both pipeline replicas run demo operations
//!   that call it: every operation still SUCCEEDS through the other replica (the
//!   pipelines' registry client retries calls cut off in transit), and the restarted
//!   replica is taken back into the pipelines' balancing;
//! - a watcher on pipeline replica A follows an operation that replica B executes and
//!   receives every event, gapless and in order, exactly as B streams them.
//!
//! The topology runs on its own ports, state directory and databases, and is torn down
//! (`clean`) whatever happens.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use capstan_client::{connect, AuthedChannel};
use capstan_proto::pipeline::v1::{
    self as pb, operations_service_client::OperationsServiceClient,
    pipeline_service_client::PipelineServiceClient,
};
use capstan_server::testing;
use capstan_tests::{binary, grpcurl, tools};
use tempfile::TempDir;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local-topology.sh");
/// Metrics port = gRPC port + this (the script's METRICS_OFFSET).
const METRICS_OFFSET: u16 = 10;
const CREATE_RUN: &str = "/capstan.registry.v1.RegistryService/CreateRun";

/// Four consecutive gRPC ports (registries, then pipelines) whose metrics ports are free
/// too, below the ephemeral range that port-0 listeners of other tests draw from.
fn free_ports() -> [u16; 4] {
    for _ in 0..50 {
        let base = 20_000 + (uuid::Uuid::new_v4().as_u128() % 10_000) as u16;
        let ports = [base, base + 1, base + 2, base + 3];
        let free = ports
            .iter()
            .flat_map(|p| [*p, p + METRICS_OFFSET])
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return ports;
        }
    }
    panic!("no free range of loopback ports found in 50 tries");
}

/// A running topology; `clean` on drop.
struct Topology {
    vars: Vec<(&'static str, String)>,
    /// The kubectl the script renders the prod overlay with.
    kubectl: PathBuf,
    info: BTreeMap<String, String>,
    registry_ports: [u16; 2],
    pipeline_ports: [u16; 2],
    torn_down: bool,
    state: TempDir,
}

impl Topology {
    /// `up` on fresh ports, state dir and databases. The script probes the instances with
    /// grpcurl, creates its databases with psql and renders the prod overlay with kubectl:
    /// each is looked up first, so that a missing one fails naming it.
    async fn up() -> Self {
        grpcurl();
        tools::require("psql");
        let kubectl = tools::kubectl();
        // The script makes its own databases on the server the test fixtures use.
        let probe = testing::TestDb::postgres().await;
        let pg_url = probe
            .url
            .rsplit_once('/')
            .map(|(base, _)| base.to_string())
            .expect("a database URL");
        drop(probe);

        let ports = free_ports();
        let state = tempfile::Builder::new()
            .prefix("capstan-topology-e2e-")
            .tempdir()
            .unwrap();
        let bin_dir = binary("registry-svc").parent().unwrap().to_path_buf();
        assert!(
            bin_dir.join("pipeline-svc").exists(),
            "{} has no pipeline-svc: run `cargo build -p pipeline-svc` (or `cargo test --workspace`)",
            bin_dir.display()
        );
        let mut topology = Self {
            vars: vec![
                (
                    "STATE_DIR",
                    state.path().join("state").display().to_string(),
                ),
                ("BIN_DIR", bin_dir.display().to_string()),
                ("PG_URL", pg_url),
                (
                    "TOPOLOGY_DB",
                    format!("capstan_t_{}", uuid::Uuid::new_v4().simple()),
                ),
                ("REGISTRY_PORTS", format!("{} {}", ports[0], ports[1])),
                ("PIPELINE_PORTS", format!("{} {}", ports[2], ports[3])),
                ("METRICS_OFFSET", METRICS_OFFSET.to_string()),
                ("READY_TIMEOUT", "60".into()),
            ],
            kubectl,
            info: BTreeMap::new(),
            registry_ports: [ports[0], ports[1]],
            pipeline_ports: [ports[2], ports[3]],
            torn_down: false,
            state,
        };
        topology.run(&["up"]).await;
        let env = std::fs::read_to_string(topology.state_dir().join("topology.env"))
            .expect("topology.env after up");
        topology.info = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        topology
    }

    fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = tools::command("bash");
        cmd.arg(SCRIPT).args(args).env("KUBECTL", &self.kubectl);
        // Inherited overrides would point the script elsewhere.
        for key in ["TOPOLOGY_REGISTRY_URL", "SKIP_PIPELINE", "CARGO_TARGET_DIR"] {
            cmd.env_remove(key);
        }
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs the script; panics with its output unless it succeeds.
    async fn run(&self, args: &[&str]) {
        let out = tokio::process::Command::from(self.command(args))
            .output()
            .await
            .expect("run local-topology.sh");
        assert!(
            out.status.success(),
            "local-topology.sh {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn get(&self, key: &str) -> &str {
        self.info
            .get(key)
            .unwrap_or_else(|| panic!("topology.env has no {key}"))
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.get("TOPOLOGY_ADMIN_TOKEN_FILE"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The pids of the instances that run now, by name.
    fn pids(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(self.get("TOPOLOGY_PID_DIR")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                out.insert(name, pid);
            }
        }
        out
    }

    /// `pipeline-svc`'s replica id (it names the executing replica in events), from the
    /// instance's JSON log.
    fn replica_id(&self, instance: &str) -> String {
        let log = Path::new(self.get("TOPOLOGY_LOG_DIR")).join(format!("{instance}.log"));
        let text = std::fs::read_to_string(&log).unwrap();
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "pipeline storage ready")
            .find_map(|v| v["replica"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("{} names no replica", log.display()))
    }

    /// `down` + drop the databases + remove the state, then checks that no process is
    /// left. Leftovers (pids this topology started) are killed and reported.
    fn teardown(&mut self) -> Result<(), String> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let pids = self.pids_or_empty();
        let out = self.command(&["clean"]).output();
        let mut problems = Vec::new();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => problems.push(format!(
                "local-topology.sh clean failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => problems.push(format!("cannot run local-topology.sh clean: {e}")),
        }
        for (name, pid) in pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline).contains("-svc");
            if ours {
                problems.push(format!("{name} (pid {pid}) still runs after clean"));
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    fn pids_or_empty(&self) -> BTreeMap<String, u32> {
        if self.info.contains_key("TOPOLOGY_PID_DIR") {
            self.pids()
        } else {
            BTreeMap::new()
        }
    }

    /// The last lines of every instance's log, for a failure report.
    fn log_tails(&self) -> String {
        let Ok(dir) = std::fs::read_dir(self.state_dir().join("logs")) else {
            return String::new();
        };
        let mut out = String::new();
        for entry in dir.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {} (last 30 lines)\n", entry.path().display());
            for l in &lines[lines.len().saturating_sub(30)..] {
                out += l;
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("topology logs:\n{}", self.log_tails());
        }
        if let Err(e) = self.teardown() {
            eprintln!("topology teardown: {e}");
        }
    }
}

/// `capstan_grpc_requests_total` of `method` answered OK, from a /metrics endpoint.
fn ok_calls(metrics_port: u16, method: &str) -> u64 {
    let mut text = String::new();
    let fetched = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        s.read_to_string(&mut text)
    });
    if let Err(e) = fetched {
        panic!("metrics on port {metrics_port}: {e}");
    }
    text.lines()
        .filter(|l| {
            l.starts_with("capstan_grpc_requests_total{")
                && l.contains(&format!("method=\"{method}\""))
                && l.contains("code=\"OK\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

struct Replica {
    pipeline: PipelineServiceClient<AuthedChannel>,
    operations: OperationsServiceClient<AuthedChannel>,
}

async fn replica(port: u16, token: &str) -> Replica {
    let channel = connect(&format!("http://127.0.0.1:{port}"), Some(token))
        .await
        .unwrap();
    Replica {
        pipeline: PipelineServiceClient::new(channel.clone()),
        operations: OperationsServiceClient::new(channel),
    }
}

fn demo(scenario: &str, seed: u64, mode: pb::ExecutionMode) -> pb::StartDemoRequest {
    let small = scenario == "showcase_minimal";
    pb::StartDemoRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        scenario: scenario.into(),
        seed: Some(seed),
        series_count: if small { 3 } else { 0 },
        days: if small { 120 } else { 0 },
        horizon: if small { 7 } else { 0 },
        execution_mode: mode as i32,
        alias: String::new(),
        timeout: None,
    }
}

/// Every event of a stream up to its end, heartbeats left out, with when each arrived.
async fn collect(
    mut stream: tonic::Streaming<pb::OperationEvent>,
) -> Result<Vec<(SystemTime, pb::OperationEvent)>, tonic::Status> {
    let mut out = Vec::new();
    while let Some(e) = stream.message().await? {
        if e.r#type != pb::OperationEventType::Heartbeat as i32 {
            out.push((SystemTime::now(), e));
        }
    }
    Ok(out)
}

/// Sequences 1..=N without a gap, the last event FINISHED: the whole log of an operation.
fn check_complete(events: &[pb::OperationEvent], what: &str) {
    let seqs: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    let expected: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(seqs, expected, "{what}: sequences are not 1..=N");
    let last = events.last().unwrap_or_else(|| panic!("{what}: no events"));
    assert_eq!(
        last.r#type,
        pb::OperationEventType::Finished as i32,
        "{what}: the last event is not FINISHED: {last:?}"
    );
}

#[derive(Debug)]
struct Outcome {
    operation_id: String,
    started: Instant,
    ended: Instant,
    /// `Ok(status)` of the FINISHED event, or what went wrong.
    result: Result<i32, String>,
    last_message: String,
}

/// Starts one demo and follows it to its end on the same replica.
async fn run_one(r: &mut Replica, request: pb::StartDemoRequest) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        operation_id: String::new(),
        started,
        ended: started,
        result: Err("not started".into()),
        last_message: String::new(),
    };
    let follow = async {
        let op = r
            .pipeline
            .start_demo(request)
            .await
            .map_err(|s| format!("StartDemo: {s}"))?
            .into_inner();
        let stream = r
            .operations
            .watch_operation(pb::WatchOperationRequest {
                operation_id: op.operation_id.clone(),
                after_sequence: 0,
            })
            .await
            .map_err(|s| format!("WatchOperation: {s}"))?
            .into_inner();
        let events: Vec<_> = collect(stream)
            .await
            .map_err(|s| format!("WatchOperation stream: {s}"))?
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        Ok::<_, String>((op.operation_id, events))
    };
    match tokio::time::timeout(Duration::from_secs(30), follow).await {
        Ok(Ok((id, events))) => {
            check_complete(&events, &format!("operation {id}"));
            let last = events.last().expect("checked");
            outcome.result = Ok(last.status);
            outcome.last_message = last.message.clone();
            outcome.operation_id = id;
        }
        Ok(Err(e)) => outcome.result = Err(e),
        Err(_) => outcome.result = Err("did not finish within 30 s".into()),
    }
    outcome.ended = Instant::now();
    outcome
}

/// Both tests share one topology: it takes seconds to start, and the watch test runs
/// after the registry test has restarted the killed replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_topology_survives_a_registry_crash_and_streams_across_replicas() {
    let mut topology = Topology::up().await;
    let token = topology.admin_token();
    registry_killed_under_load(&topology, &token).await;
    watch_on_a_follows_b(&topology, &token).await;
    if let Err(e) = topology.teardown() {
        panic!("{e}");
    }
}

/// (a) SIGKILL registry-1 while both pipelines run demos that call it.
async fn registry_killed_under_load(topology: &Topology, token: &str) {
    let [reg1, _] = topology.registry_ports;
    let reg1_metrics = reg1 + METRICS_OFFSET;
    let before = ok_calls(reg1_metrics, CREATE_RUN);

    // One client per pipeline replica: DIRECT on pipeline-1, QUEUED through pipeline-2 for
    // whichever replica's worker claims it. Not more: every demo moves the one alias
    // demo-production, and more concurrent demos fail on that contention (cleanup's
    // compare-and-swap gives up after 5 tries), which is not what this test is about.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (i, mode) in [pb::ExecutionMode::Direct, pb::ExecutionMode::Queued]
        .into_iter()
        .enumerate()
    {
        let mut r = replica(topology.pipeline_ports[i], token).await;
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut seed = i as u64 * 1000;
            while !stop.load(Ordering::SeqCst) {
                seed += 1;
                done.push(run_one(&mut r, demo("showcase_minimal", seed, mode)).await);
            }
            done
        }));
    }

    // Kill only once registry-1 demonstrably serves the pipelines' calls.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ok_calls(reg1_metrics, CREATE_RUN) < before + 6 {
        assert!(
            Instant::now() < deadline,
            "registry-1 served no CreateRun of the load within 20 s: the pipelines do not balance over both registries"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let served = ok_calls(reg1_metrics, CREATE_RUN) - before;
    topology.run(&["kill", "registry-1"]).await;
    let killed_at = Instant::now();
    eprintln!("registry-1 (had served {served} CreateRun of the load) SIGKILLed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.unwrap());
    }

    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.result != Ok(pb::OperationStatus::Succeeded as i32))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} operations did not succeed around the registry crash: {failed:#?}",
        failed.len(),
        outcomes.len()
    );
    let spanning = outcomes
        .iter()
        .filter(|o| o.started < killed_at && o.ended > killed_at)
        .count();
    let after = outcomes.iter().filter(|o| o.started > killed_at).count();
    let retried: usize = ["pipeline-1", "pipeline-2"]
        .iter()
        .map(|name| {
            let log = Path::new(topology.get("TOPOLOGY_LOG_DIR")).join(format!("{name}.log"));
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.matches("registry call failed in transit").count()
        })
        .sum();
    eprintln!(
        "{} operations SUCCEEDED: {spanning} in flight at the kill, {after} started after it; \
         the pipelines retried {retried} registry calls cut off by the kill",
        outcomes.len()
    );
    assert!(spanning > 0, "no operation was in flight at the kill");
    assert!(after > 0, "no operation started after the kill");

    // `up` restarts just the killed replica; the pipelines' balancers take it back.
    let pids = topology.pids();
    assert!(
        !pids.contains_key("registry-1"),
        "registry-1 still has a pid"
    );
    topology.run(&["up"]).await;
    let again = topology.pids();
    assert!(
        again.contains_key("registry-1"),
        "up did not restart registry-1"
    );
    for name in ["registry-2", "pipeline-1", "pipeline-2"] {
        assert_eq!(pids.get(name), again.get(name), "{name} was restarted");
    }
    let mut r = replica(topology.pipeline_ports[0], token).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seed = 9000;
    while ok_calls(reg1_metrics, CREATE_RUN) == 0 {
        assert!(
            Instant::now() < deadline,
            "the restarted registry-1 got no CreateRun within 20 s: the pipelines did not take it back"
        );
        seed += 1;
        let o = run_one(
            &mut r,
            demo("showcase_minimal", seed, pb::ExecutionMode::Direct),
        )
        .await;
        assert_eq!(o.result, Ok(pb::OperationStatus::Succeeded as i32), "{o:?}");
    }
}

/// (b) A watcher on pipeline-1 (A) follows a demo that pipeline-2 (B) executes.
async fn watch_on_a_follows_b(topology: &Topology, token: &str) {
    let [a_port, b_port] = topology.pipeline_ports;
    let (replica_a, replica_b) = (
        topology.replica_id("pipeline-1"),
        topology.replica_id("pipeline-2"),
    );
    assert_ne!(replica_a, replica_b);
    let mut a = replica(a_port, token).await;
    let mut b = replica(b_port, token).await;

    // RunDemo on B: DIRECT, so B executes it, and B streams it from its first event.
    let mut b_stream = b
        .pipeline
        .run_demo(pb::RunDemoRequest {
            demo: Some(demo("showcase_rich", 7, pb::ExecutionMode::Direct)),
        })
        .await
        .unwrap()
        .into_inner();
    let first = b_stream.message().await.unwrap().expect("a first event");
    let id = first.operation_id.clone();
    let a_stream = a
        .operations
        .watch_operation(pb::WatchOperationRequest {
            operation_id: id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let (a_events, b_rest) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(collect(a_stream), collect(b_stream))
    })
    .await
    .expect("both streams end within 60 s");
    let a_events = a_events.unwrap();
    let mut b_events = vec![first];
    b_events.extend(b_rest.unwrap().into_iter().map(|(_, e)| e));

    check_complete(&b_events, "B's RunDemo stream");
    let (a_arrivals, a_events): (Vec<SystemTime>, Vec<pb::OperationEvent>) =
        a_events.into_iter().unzip();
    check_complete(&a_events, "A's WatchOperation stream");
    assert_eq!(a_events, b_events, "A streams exactly the events B streams");
    let last = a_events.last().expect("checked");
    assert_eq!(
        last.status,
        pb::OperationStatus::Succeeded as i32,
        "{last:?}"
    );
    let started = a_events
        .iter()
        .find(|e| e.r#type == pb::OperationEventType::Started as i32)
        .expect("a STARTED event");
    assert!(
        started.message.contains(&replica_b),
        "B ({replica_b}) executes it, yet: {:?}",
        started.message
    );
    let op = a
        .operations
        .get_operation(pb::GetOperationRequest {
            operation_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.last_sequence, a_events.len() as i64);
    // A followed the work live, not only a replay after the end.
    let finished_at: SystemTime = last
        .time
        .and_then(|t| t.try_into().ok())
        .expect("the FINISHED event has a time");
    assert!(
        a_arrivals[0] < finished_at,
        "A's first event arrived after the operation had finished: no live follow shown"
    );
    eprintln!(
        "A ({replica_a}) streamed all {} events of operation {id} executed by B ({replica_b})",
        a_events.len()
    );
}
