//! Crash drill (issue 3, "Must show 3"): QUEUED mode, two real pipeline-svc processes on
//! one Postgres database. For every phase of `showcase_rich` in turn, the process holding
//! the operation's lease is killed with SIGKILL while it is inside that phase's step.
//! Every operation must end SUCCEEDED (resumed by the survivor), `demo-production` must
//! end on the champion (it may hold the worse run only between the drill and the cleanup
//! or safeguard), and a watcher whose stream breaks with the victim and that reconnects to
//! the survivor with its last sequence must receive every event exactly once, in order.
//!
//! Steps take a few milliseconds, too little to aim a kill at from outside. So a
//! test-owned trigger on the event log parks the victim's write of the target step's
//! event (its STEP_FINISHED: the work is done but not recorded, the hardest case for
//! idempotency; or its first PROGRESS: mid-step) on an advisory lock the test holds.
//! The kill therefore always lands inside the step, and the victim is whichever process
//! the `jobs` table names as the lease holder at that moment.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use pipeline_svc::{
    app::PipelineArgs, domain::showcase::params::RICH_STEPS, store::sql::POSTGRES_SCHEMA,
};
use sqlx::{Connection, Executor, PgConnection, Row};

use crate::common::{operations_client, replica::Replica, stack::*, token, TestDb};

/// Advisory lock key of the gate (any number no other code uses).
const GATE_KEY: i64 = 0x00c0_ffee_c2a5;
const LEASE_SECONDS: &str = "2";
/// Bounds one round (start, park, kill, lease expiry, resume, finish).
const ROUND_LIMIT: Duration = Duration::from_secs(90);
/// Bounds the whole drill.
const DRILL_LIMIT: Duration = Duration::from_secs(300);

/// Steps that report progress before they finish: they are killed mid-step as well.
const MID_STEP: [&str; 3] = [
    "train_and_backtest",
    "safer_promote_flow",
    "scenario_simulate_and_save",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_every_phase_resumes_on_the_other_replica() {
    let db = TestDb::postgres().await;
    tokio::time::timeout(DRILL_LIMIT, drill(db))
        .await
        .expect("the crash drill finishes within its time bound");
}

/// A QUEUED pipeline-svc process of the drill, with short leases.
fn replica(args: &PipelineArgs, id: &str, dir: &Path) -> Replica {
    let path = |p: &Path| p.display().to_string();
    Replica::spawn(
        args.common.database_url.as_deref().expect("database url"),
        dir,
        id,
        &[
            "--registry-url",
            &args.registry_url,
            "--registry-token-file",
            &path(args.registry_token_file.as_deref().expect("token")),
            "--direct-execution",
            "false",
            "--lease-seconds",
            LEASE_SECONDS,
            "--poll-interval-millis",
            "100",
            "--watch-heartbeat-seconds",
            "1",
        ],
    )
}

/// The test's handle on the pipeline database: installs the gate, opens and closes it,
/// and reads who holds a lease.
struct Gate {
    conn: PgConnection,
}

impl Gate {
    async fn install(url: &str) -> Gate {
        let mut conn = PgConnection::connect(url).await.expect("pipeline database");
        let s = POSTGRES_SCHEMA;
        for sql in [
            format!("CREATE TABLE {s}.crash_gate (step TEXT NOT NULL, type TEXT NOT NULL)"),
            format!(
                "CREATE FUNCTION {s}.crash_gate_wait() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN \
                   IF EXISTS (SELECT 1 FROM {s}.crash_gate g \
                              WHERE g.step = NEW.step AND g.type = NEW.type) THEN \
                     PERFORM pg_advisory_xact_lock_shared({GATE_KEY}); \
                   END IF; \
                   RETURN NEW; \
                 END $$"
            ),
            format!(
                "CREATE TRIGGER crash_gate BEFORE INSERT ON {s}.operation_events \
                 FOR EACH ROW EXECUTE FUNCTION {s}.crash_gate_wait()"
            ),
        ] {
            conn.execute(sql.as_str()).await.expect("install the gate");
        }
        Gate { conn }
    }

    /// From now on, whoever writes event `kind` of `step` waits until [`Gate::open`].
    async fn close(&mut self, step: &str, kind: &str) {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(GATE_KEY)
            .execute(&mut self.conn)
            .await
            .expect("advisory lock");
        sqlx::query(&format!(
            "INSERT INTO {POSTGRES_SCHEMA}.crash_gate (step, type) VALUES ($1, $2)"
        ))
        .bind(step)
        .bind(kind)
        .execute(&mut self.conn)
        .await
        .expect("gate row");
    }

    async fn open(&mut self) {
        sqlx::query(&format!("DELETE FROM {POSTGRES_SCHEMA}.crash_gate"))
            .execute(&mut self.conn)
            .await
            .expect("clear the gate");
        let released: bool = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(GATE_KEY)
            .fetch_one(&mut self.conn)
            .await
            .expect("advisory unlock")
            .get(0);
        assert!(released, "the test held the gate lock");
    }

    /// Waits until a writer is parked at the gate; returns the replica holding the lease.
    async fn parked(&mut self, operation_id: &str, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: i64 = sqlx::query(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
            )
            .fetch_one(&mut self.conn)
            .await
            .expect("pg_stat_activity")
            .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no writer reached the gate within 30 s (does the step still record that event?)"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The parked writer holds its lease row share-locked, so the holder cannot change
        // before the kill.
        sqlx::query(&format!(
            "SELECT lease_owner FROM {POSTGRES_SCHEMA}.jobs WHERE operation_id = $1 AND state = 'leased'"
        ))
        .bind(operation_id)
        .fetch_one(&mut self.conn)
        .await
        .expect("the operation's job is leased")
        .get(0)
    }
}

/// Polls `demo-production` until stopped; keeps every value it changes to.
struct AliasPoller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Option<String>>>,
}

impl AliasPoller {
    fn start(registry_url: &str) -> AliasPoller {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, s) = (registry_url.to_string(), stop.clone());
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let now = alias_run(&url).await;
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        });
        AliasPoller { stop, task }
    }

    /// Stops polling; the last value is read after the stop.
    async fn finish(self, registry_url: &str) -> Vec<Option<String>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = self.task.await.expect("alias poller");
        let now = alias_run(registry_url).await;
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        seen
    }
}

struct Round {
    step: &'static str,
    /// The event of `step` whose write parks the victim.
    gate: &'static str,
}

struct Outcome {
    victim: String,
    survivor: String,
    events: usize,
    reconnects: usize,
    alias_at_kill: &'static str,
    took: Duration,
}

async fn drill(db: TestDb) {
    let base = Base::start(&db).await;
    let args = base.pipeline_args.clone();
    let registry_url = base.registry_url.clone();
    let dir = db.dir.path().join("replicas");
    std::fs::create_dir_all(&dir).unwrap();
    let mut replicas = vec![replica(&args, "r0-a", &dir), replica(&args, "r0-b", &dir)];
    let mut gate = Gate::install(args.common.database_url.as_deref().unwrap()).await;
    let user = token("crash-drill", Role::User);

    // A first run gives the alias a champion from before the drill.
    let (_, first) = run_demo(&replicas[0].url, &user, demo_request("showcase_minimal")).await;
    assert_eq!(first.status, pb::OperationStatus::Succeeded as i32);

    let rounds: Vec<Round> = RICH_STEPS
        .iter()
        .flat_map(|s| {
            let mid = MID_STEP.contains(&s.name).then_some(Round {
                step: s.name,
                gate: "PROGRESS",
            });
            mid.into_iter().chain([Round {
                step: s.name,
                gate: "STEP_FINISHED",
            }])
        })
        .collect();
    let mut report = Vec::new();
    for (n, round) in rounds.iter().enumerate() {
        let outcome = tokio::time::timeout(
            ROUND_LIMIT,
            crash_round(n, round, &mut replicas, &mut gate, &registry_url, &user),
        )
        .await;
        let outcome = outcome.unwrap_or_else(|_| {
            let logs: Vec<String> = replicas
                .iter()
                .map(|r| format!("--- {} ---\n{}", r.id, r.log_tail()))
                .collect();
            panic!(
                "round {n} ({} at {}) did not finish within {ROUND_LIMIT:?}\n{}",
                round.step,
                round.gate,
                logs.join("\n")
            )
        });
        report.push((round, outcome));
        // Two processes again for the next round.
        let victim = report.last().map(|(_, o)| o.victim.clone()).unwrap();
        let i = replicas.iter().position(|r| r.id == victim).unwrap();
        replicas[i] = replica(&args, &format!("r{}-{}", n + 1, ["a", "b"][i]), &dir);
    }

    eprintln!("\nphase       step                        killed at      victim  survivor  events  reconnects  alias at kill  took");
    for (r, o) in &report {
        let phase = RICH_STEPS.iter().find(|s| s.name == r.step).unwrap().phase;
        eprintln!(
            "{phase:<11} {:<27} {:<14} {:<7} {:<9} {:>6}  {:>10}  {:<13}  {:.1} s",
            r.step,
            r.gate,
            o.victim,
            o.survivor,
            o.events,
            o.reconnects,
            o.alias_at_kill,
            o.took.as_secs_f64()
        );
    }

    // Every operation the drill started is terminal (each round checked its own alias).
    let mut ops = operations_client(&replicas[0].url, &user).await;
    let listed = ops
        .list_operations(pb::ListOperationsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.operations.len(), rounds.len() + 1);
    for op in &listed.operations {
        assert_eq!(
            op.status,
            pb::OperationStatus::Succeeded as i32,
            "{}",
            op.operation_id
        );
    }

    for r in &replicas {
        r.terminate();
    }
    for r in &mut replicas {
        let status = tokio::task::block_in_place(|| r.wait());
        assert!(status.success(), "{} exited with {status}", r.id);
    }
    drop(gate);
    base.registry.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), base.registry.task).await;
}

/// One operation, one SIGKILL inside `round.step`; checks the invariants.
async fn crash_round(
    n: usize,
    round: &Round,
    replicas: &mut [Replica],
    gate: &mut Gate,
    registry_url: &str,
    user: &str,
) -> Outcome {
    let t0 = Instant::now();
    let what = format!("round {n} ({} killed at {})", round.step, round.gate);
    let before = alias_run(registry_url).await;
    gate.close(round.step, round.gate).await;

    let entry = n % replicas.len();
    let mut request = demo_request("showcase_rich");
    request.seed = Some(1000 + n as u64);
    let op = pipeline_client(&replicas[entry].url, user)
        .await
        .start_demo(request)
        .await
        .expect("StartDemo")
        .into_inner();
    assert_eq!(op.execution_mode, pb::ExecutionMode::Queued as i32);
    let id = op.operation_id.clone();
    let poller = AliasPoller::start(registry_url);

    let watch = |url: String, after: i64| {
        let id = id.clone();
        async move {
            operations_client(&url, user)
                .await
                .watch_operation(pb::WatchOperationRequest {
                    operation_id: id,
                    after_sequence: after,
                })
                .await
                .expect("WatchOperation")
                .into_inner()
        }
    };
    let mut on = entry;
    let mut stream = watch(replicas[on].url.clone(), 0).await;
    let mut events: Vec<pb::OperationEvent> = Vec::new();
    let mut victim: Option<usize> = None;
    let mut alias_at_kill = None;
    let mut reconnects = 0;
    let mut finished = false;
    loop {
        let last = events.last().map_or(0, |e| e.sequence);
        let next = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("{what}: no event for 30 s after sequence {last}"));
        let e = match next {
            Ok(Some(e)) => e,
            Ok(None) if finished => break,
            // The victim's stream breaks (or ends early): resume from the last sequence on
            // the survivor.
            Ok(None) | Err(_) => {
                let survivor = victim
                    .map(|v| 1 - v)
                    .unwrap_or_else(|| panic!("{what}: the stream broke before the kill"));
                assert!(!finished, "{what}: stream broke after the terminal event");
                on = survivor;
                stream = watch(replicas[on].url.clone(), last).await;
                reconnects += 1;
                continue;
            }
        };
        if e.r#type == pb::OperationEventType::Heartbeat as i32 {
            continue;
        }
        assert!(!finished, "{what}: event after the terminal one: {e:?}");
        finished = e.r#type == pb::OperationEventType::Finished as i32;
        let parked_here = victim.is_none()
            && e.r#type == pb::OperationEventType::StepStarted as i32
            && e.step == round.step;
        events.push(e);
        if !parked_here {
            continue;
        }
        let holder = gate.parked(&id, &what).await;
        let v = replicas
            .iter()
            .position(|r| r.id == holder)
            .unwrap_or_else(|| panic!("{what}: lease held by unknown replica {holder}"));
        if on != v {
            // Follow the victim, so that the kill breaks this very stream.
            on = v;
            let last = events.last().map_or(0, |e| e.sequence);
            stream = watch(replicas[on].url.clone(), last).await;
            reconnects += 1;
        }
        alias_at_kill = Some(alias_run(registry_url).await);
        tokio::task::block_in_place(|| replicas[v].kill());
        gate.open().await;
        victim = Some(v);
    }
    let alias_seen = poller.finish(registry_url).await;
    let v = victim.unwrap_or_else(|| panic!("{what}: the gate was never reached"));
    let (victim_id, survivor_id) = (replicas[v].id.clone(), replicas[1 - v].id.clone());

    // Exactly once, in order, gapless, ending with the terminal event.
    let seqs: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "{what}: {events:#?}"
    );
    let terminal = events.last().unwrap();
    assert_eq!(terminal.r#type, pb::OperationEventType::Finished as i32);
    assert!(reconnects >= 1, "{what}: the watcher never reconnected");
    // What the reconnecting watcher got is the stored log, event for event.
    let mut replay = watch(replicas[1 - v].url.clone(), 0).await;
    let mut stored = Vec::new();
    while let Some(e) = replay.message().await.expect("replay") {
        if e.r#type != pb::OperationEventType::Heartbeat as i32 {
            stored.push(e);
        }
    }
    assert_eq!(events, stored, "{what}");

    let op = operations_client(&replicas[1 - v].url, user)
        .await
        .get_operation(pb::GetOperationRequest {
            operation_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        op.status,
        pb::OperationStatus::Succeeded as i32,
        "{what}: {op:#?}"
    );
    assert_eq!(terminal.status, op.status);
    assert_eq!(op.last_sequence, events.len() as i64);
    assert_eq!(op.attempts, 2, "{what}: {op:#?}");
    let killed = op.steps.iter().position(|s| s.name == round.step).unwrap();
    for (i, s) in op.steps.iter().enumerate() {
        let expected = if i == killed { 2 } else { 1 };
        assert_eq!(s.attempt, expected, "{what}: step {} {s:?}", s.name);
        assert_eq!(s.status, pb::StepStatus::Passed as i32, "{what}: {s:?}");
    }
    let starts: Vec<&str> = events
        .iter()
        .filter(|e| e.r#type == pb::OperationEventType::Started as i32)
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(starts.len(), 2, "{what}: {starts:?}");
    assert!(starts[0].contains(&victim_id), "{what}: {starts:?}");
    assert!(
        starts[1].contains("resumed") && starts[1].contains(&survivor_id),
        "{what}: {starts:?}"
    );

    // demo-production: only ever the value before the run, the champion or (between the
    // drill and the cleanup or safeguard) the challenger, and on the champion at the end.
    let d = demo_result(&op);
    let (champion, challenger) = (Some(d.winning_run_id.clone()), Some(d.challenger_run_id));
    assert!(champion.as_deref().is_some_and(|c| !c.is_empty()));
    let allowed: BTreeSet<Option<String>> =
        [before.clone(), champion.clone(), challenger.clone()].into();
    for a in alias_seen.iter().chain(&alias_at_kill) {
        assert!(
            allowed.contains(a),
            "{what}: alias on {a:?}, allowed {allowed:?}"
        );
    }
    assert_eq!(alias_seen.last(), Some(&champion), "{what}: {alias_seen:?}");
    assert_eq!(alias_run(registry_url).await, champion, "{what}");
    assert_eq!(d.alias_run_id, d.winning_run_id, "{what}");
    let at_kill = alias_at_kill.expect("read at the kill");
    let alias_at_kill = if at_kill == champion {
        "champion"
    } else if at_kill == challenger {
        "worse run"
    } else {
        "before"
    };
    Outcome {
        victim: victim_id,
        survivor: survivor_id,
        events: events.len(),
        reconnects,
        alias_at_kill,
        took: t0.elapsed(),
    }
}
