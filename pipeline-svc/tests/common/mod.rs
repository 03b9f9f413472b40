//! Test fixtures: databases (SQLite files, one fresh Postgres database per test), engines
//! with test workflows, and in-process registry + pipeline servers on port 0.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use capstan_server::{
    auth::{issue_hs256, Role, Verifier},
    config::{AuthMode, CommonArgs, LogFormat},
    serve::ServeOptions,
};
use pipeline_svc::{
    app::{KnowledgeProvider, PipelineArgs},
    domain::{
        engine::{Engine, EngineConfig},
        operation::{ExecutionMode, Operation, OperationResult},
        workflow::{Execution, StepCx, StepOutcome, StepSpec, Workflow},
    },
    error::{Error, Result},
    store::{sql::SqlStore, OperationStore},
};
use sqlx::{Connection, Executor};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// One test's databases: SQLite files in a temp dir, or fresh Postgres databases.
pub struct TestDb {
    pub dir: TempDir,
    pub postgres: bool,
    created: Vec<String>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            postgres: false,
            created: Vec::new(),
        }
    }

    /// `None` (after a loud SKIPPED line) when Postgres is unreachable and
    /// CAPSTAN_REQUIRE_POSTGRES is not 1.
    pub async fn postgres() -> Option<Self> {
        match sqlx::PgConnection::connect(PG_ADMIN).await {
            Ok(c) => {
                drop(c);
                Some(Self {
                    dir: tempfile::tempdir().expect("tempdir"),
                    postgres: true,
                    created: Vec::new(),
                })
            }
            Err(e) => {
                if std::env::var("CAPSTAN_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!(
                        "Postgres at 127.0.0.1:5432 is required (CAPSTAN_REQUIRE_POSTGRES=1): {e}"
                    );
                }
                eprintln!("SKIPPED: Postgres at 127.0.0.1:5432 is unreachable ({e}); set CAPSTAN_REQUIRE_POSTGRES=1 to fail instead");
                None
            }
        }
    }

    /// A database URL named `name`: a file, or a new Postgres database.
    pub async fn url(&mut self, name: &str) -> String {
        if !self.postgres {
            return format!(
                "sqlite://{}?mode=rwc",
                self.dir.path().join(format!("{name}.db")).display()
            );
        }
        let db = format!("capstan_t_{}", uuid::Uuid::new_v4().simple());
        let mut c = sqlx::PgConnection::connect(PG_ADMIN)
            .await
            .expect("postgres");
        c.execute(format!("CREATE DATABASE {db}").as_str())
            .await
            .expect("create database");
        self.created.push(db.clone());
        format!("postgres://postgres@127.0.0.1:5432/{db}")
    }

    /// Drops the Postgres databases (left behind if the test failed, for inspection).
    pub async fn cleanup(self) {
        if self.created.is_empty() {
            return;
        }
        if let Ok(mut c) = sqlx::PgConnection::connect(PG_ADMIN).await {
            for db in &self.created {
                if let Err(e) = c
                    .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
                    .await
                {
                    eprintln!("cannot drop test database {db}: {e}");
                }
            }
        }
    }
}

/// Runs `$body` (an async fn taking `TestDb`) on SQLite and on Postgres.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name($crate::common::TestDb::sqlite()).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    if let Some(db) = $crate::common::TestDb::postgres().await {
                        super::$name(db).await;
                    }
                }
            }
        )*
    };
}

pub async fn store(url: &str, replica: &str) -> Arc<dyn OperationStore> {
    Arc::new(SqlStore::connect(url, replica).await.expect("store"))
}

pub fn engine_config(replica: &str) -> EngineConfig {
    EngineConfig {
        replica_id: replica.into(),
        default_mode: ExecutionMode::Direct,
        lease: Duration::from_millis(900),
        worker_concurrency: 8,
        queue_workers: true,
        poll_interval: Duration::from_millis(50),
        watch_heartbeat: Duration::from_millis(200),
        max_attempts: 5,
        faults: Default::default(),
    }
}

/// A workflow of `steps` no-op steps (`s0`, `s1`, …) for engine tests. It logs what ran
/// and what was compensated, and can fail a step, fail a compensation, emit progress
/// events, or stop at a step until released.
#[derive(Clone, Default)]
pub struct TestFlow {
    pub log: Arc<Mutex<Vec<String>>>,
    pub fail_at: Option<usize>,
    pub failing_compensation: Option<usize>,
    pub progress_per_step: usize,
    pub step_delay: Duration,
    /// The step waits for a permit here before it returns (or forever when never given).
    pub gate: Option<(usize, Arc<tokio::sync::Semaphore>)>,
}

pub const TEST_KIND: &str = "test.steps";

pub fn test_params(steps: usize) -> serde_json::Value {
    serde_json::json!({ "steps": steps })
}

impl TestFlow {
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn engine(self, store: Arc<dyn OperationStore>, cfg: EngineConfig) -> Arc<Engine> {
        let engine = Engine::new(
            store,
            cfg,
            [(TEST_KIND.to_string(), Arc::new(self) as Arc<dyn Workflow>)],
            CancellationToken::new(),
        );
        engine.spawn_background();
        engine
    }
}

impl Workflow for TestFlow {
    fn plan(&self, params: &serde_json::Value) -> Result<Vec<StepSpec>> {
        let n = params["steps"].as_u64().unwrap_or(0) as usize;
        if n == 0 || n > 200 {
            return Err(Error::invalid("steps", "must be 1-200"));
        }
        // Step names are 'static in real workflows; a test may leak a few bytes.
        Ok((0..n)
            .map(|i| StepSpec {
                name: Box::leak(format!("s{i}").into_boxed_str()),
                phase: "test",
            })
            .collect())
    }

    fn resume(&self, op: &Operation) -> Result<Box<dyn Execution>> {
        let done = op.state["done"].as_u64().unwrap_or(0);
        Ok(Box::new(TestExec {
            flow: self.clone(),
            done,
        }))
    }
}

struct TestExec {
    flow: TestFlow,
    done: u64,
}

fn index_of(step: &str) -> usize {
    step[1..].parse().unwrap_or(usize::MAX)
}

#[async_trait]
impl Execution for TestExec {
    async fn run_step(&mut self, step: &str, cx: &StepCx<'_>) -> Result<StepOutcome> {
        let i = index_of(step);
        self.flow.log.lock().unwrap().push(step.to_string());
        for k in 0..self.flow.progress_per_step {
            cx.progress(format!("{step} progress {k}")).await?;
        }
        if !self.flow.step_delay.is_zero() {
            tokio::time::sleep(self.flow.step_delay).await;
        }
        if let Some((at, gate)) = &self.flow.gate {
            if *at == i {
                let permit = gate.acquire().await;
                drop(permit);
            }
        }
        if self.flow.fail_at == Some(i) {
            return Err(Error::Unavailable(format!("{step} exploded")));
        }
        self.done += 1;
        Ok(StepOutcome::Passed(format!("{step} done")))
    }

    async fn compensate(&mut self, step: &str) -> Result<Option<String>> {
        self.flow.log.lock().unwrap().push(format!("undo:{step}"));
        if self.flow.failing_compensation == Some(index_of(step)) {
            return Err(Error::Unavailable(format!("undo of {step} exploded")));
        }
        Ok(Some(format!("undid {step}")))
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "done": self.done })
    }

    fn result(&self) -> Option<OperationResult> {
        None
    }
}

/// Waits (at most `limit`) until `f` returns `Some`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- in-process servers --------------------------------------------------------------

pub const SECRET: &[u8] = b"capstan-test-secret-0123456789";

pub fn token(subject: &str, role: Role) -> String {
    issue_hs256(SECRET, subject, role, 3600).expect("token")
}

pub fn common_args(database_url: String, data_dir: &Path, secret_file: &Path) -> CommonArgs {
    CommonArgs {
        database_url: Some(database_url),
        data_dir: data_dir.to_path_buf(),
        metrics_listen: None,
        auth: AuthMode::Jwt,
        jwt_secret_file: Some(secret_file.to_path_buf()),
        tls_cert_file: None,
        tls_key_file: None,
        shutdown_deadline_seconds: 5,
        max_message_bytes: 8 * 1024 * 1024,
        max_concurrent_streams: 1024,
        max_connection_age_seconds: 0,
        log_format: LogFormat::Text,
    }
}

fn options() -> ServeOptions {
    ServeOptions::for_tests(Verifier::hs256(SECRET))
}

/// A registry server, and the flags a pipeline server on the same databases needs.
pub struct Base {
    pub registry: registry_svc::app::Running,
    pub registry_url: String,
    /// The registry's database URL.
    pub registry_args_url: String,
    pub pipeline_args: PipelineArgs,
}

impl Base {
    pub async fn start(db: &mut TestDb) -> Base {
        capstan_server::telemetry::init_tracing(LogFormat::Text);
        let dir = db.dir.path().to_path_buf();
        let secret_file = dir.join("jwt.secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let registry_db = db.url("registry").await;
        let registry_args = registry_svc::app::RegistryArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            common: common_args(registry_db.clone(), &dir.join("registry"), &secret_file),
            artifact_store: "fs".into(),
            reaper_interval_seconds: 5,
            alias_reads: registry_svc::app::AliasReads::Fresh,
            database_wait_seconds: 5,
        };
        let registry = registry_svc::app::start(&registry_args, options())
            .await
            .expect("registry starts");
        let registry_url = format!("http://{}", registry.addr);
        let token_file = dir.join("registry.token");
        std::fs::write(&token_file, token("pipeline-svc", Role::Service)).unwrap();
        let pipeline_args = PipelineArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            common: common_args(
                db.url("pipeline").await,
                &dir.join("pipeline"),
                &secret_file,
            ),
            registry_url: registry_url.clone(),
            registry_token_file: Some(token_file),
            direct_execution: true,
            watch_heartbeat_seconds: 1,
            lease_seconds: 2,
            worker_concurrency: 4,
            queue_workers: true,
            poll_interval_millis: 100,
            max_attempts: 5,
            replica_id: None,
            knowledge_provider: KnowledgeProvider::Local,
            knowledge_url: None,
            knowledge_api_key_file: None,
            fail_step: None,
            abort_at_step: None,
            database_wait_seconds: 5,
        };
        Base {
            registry,
            registry_url,
            registry_args_url: registry_db,
            pipeline_args,
        }
    }
}

pub struct Stack {
    pub registry: registry_svc::app::Running,
    pub registry_url: String,
    pub pipeline: pipeline_svc::app::Running,
    pub pipeline_url: String,
    pub args: PipelineArgs,
}

impl Stack {
    /// A registry and a pipeline server on `db`; `tweak` adjusts the pipeline's flags.
    pub async fn start(
        db: &mut TestDb,
        tweak: impl FnOnce(&mut PipelineArgs),
        extra: Vec<(String, Arc<dyn Workflow>)>,
    ) -> Stack {
        Stack::on(Base::start(db).await, tweak, extra).await
    }

    /// Adds a pipeline server to `base`.
    pub async fn on(
        base: Base,
        tweak: impl FnOnce(&mut PipelineArgs),
        extra: Vec<(String, Arc<dyn Workflow>)>,
    ) -> Stack {
        let mut args = base.pipeline_args;
        tweak(&mut args);
        let pipeline = pipeline_svc::app::start_with(&args, options(), extra)
            .await
            .expect("pipeline starts");
        let pipeline_url = format!("http://{}", pipeline.addr);
        Stack {
            registry: base.registry,
            registry_url: base.registry_url,
            pipeline,
            pipeline_url,
            args,
        }
    }

    /// Replaces the pipeline server with one started with other flags (same databases).
    pub async fn restart_pipeline(&mut self, tweak: impl FnOnce(&mut PipelineArgs)) {
        self.pipeline.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.pipeline.task).await;
        let mut args = self.args.clone();
        tweak(&mut args);
        self.pipeline = pipeline_svc::app::start(&args, options())
            .await
            .expect("pipeline restarts");
        self.pipeline_url = format!("http://{}", self.pipeline.addr);
        self.args = args;
    }

    pub async fn stop(self) {
        self.pipeline.shutdown.cancel();
        self.registry.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.pipeline.task).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.registry.task).await;
    }
}

pub type PipelineClient =
    capstan_proto::pipeline::v1::pipeline_service_client::PipelineServiceClient<
        capstan_server::client::AuthedChannel,
    >;
pub type OperationsClient =
    capstan_proto::pipeline::v1::operations_service_client::OperationsServiceClient<
        capstan_server::client::AuthedChannel,
    >;

pub async fn pipeline_client(url: &str, token: &str) -> PipelineClient {
    PipelineClient::new(
        capstan_server::client::connect(url, Some(token))
            .await
            .expect("connect"),
    )
}

pub async fn operations_client(url: &str, token: &str) -> OperationsClient {
    OperationsClient::new(
        capstan_server::client::connect(url, Some(token))
            .await
            .expect("connect"),
    )
}

pub async fn registry_client(url: &str) -> capstan_server::client::RegistryClient {
    capstan_server::client::registry_client(url, Some(&token("test-admin", Role::Admin)), 8 << 20)
        .await
        .expect("registry client")
}

/// An engine without worker or listeners: queued jobs stay queued.
pub fn idle_engine(store: Arc<dyn OperationStore>, flow: TestFlow) -> Arc<Engine> {
    Engine::new(
        store,
        engine_config("idle"),
        [(TEST_KIND.to_string(), Arc::new(flow) as Arc<dyn Workflow>)],
        CancellationToken::new(),
    )
}

pub fn start_request(
    steps: usize,
    mode: Option<ExecutionMode>,
) -> pipeline_svc::domain::engine::StartOperation {
    pipeline_svc::domain::engine::StartOperation {
        kind: TEST_KIND.into(),
        params: test_params(steps),
        request_id: None,
        mode,
    }
}

/// Every event of the operation from `after` to the terminal one (heartbeats dropped).
pub async fn collect(
    engine: &Arc<Engine>,
    id: uuid::Uuid,
    after: i64,
) -> Vec<pipeline_svc::domain::operation::Event> {
    let mut rx = engine.watch(id, None, after).await.expect("watch");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if e.kind == pipeline_svc::domain::operation::EventType::Heartbeat => {}
            Ok(Some(e)) => out.push(e),
            Ok(None) => return out,
            Err(_) => panic!("operation {id} did not finish in 30 s; events so far: {out:#?}"),
        }
    }
}

/// Asserts that `events` are exactly the sequences `from..` with no gap or repeat.
pub fn assert_gapless(events: &[pipeline_svc::domain::operation::Event], from: i64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, from + i as i64, "event {i} of {events:#?}");
    }
}

use capstan_proto::pipeline::v1 as pb;

/// Runs a demo over `RunDemo` and returns its events (heartbeats dropped) and the final
/// operation.
pub async fn run_demo(
    url: &str,
    token: &str,
    request: pb::StartDemoRequest,
) -> (Vec<pb::OperationEvent>, pb::Operation) {
    let mut client = pipeline_client(url, token).await;
    let mut stream = client
        .run_demo(pb::RunDemoRequest {
            demo: Some(request),
        })
        .await
        .expect("RunDemo")
        .into_inner();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(e))) if e.r#type == pb::OperationEventType::Heartbeat as i32 => {}
            Ok(Ok(Some(e))) => events.push(e),
            Ok(Ok(None)) => break,
            Ok(Err(s)) => panic!("RunDemo stream failed: {s}"),
            Err(_) => panic!("demo did not finish in 60 s: {events:#?}"),
        }
    }
    let id = events
        .first()
        .expect("at least one event")
        .operation_id
        .clone();
    let op = operations_client(url, token)
        .await
        .get_operation(pb::GetOperationRequest { operation_id: id })
        .await
        .expect("GetOperation")
        .into_inner();
    (events, op)
}

pub fn demo_request(scenario: &str) -> pb::StartDemoRequest {
    pb::StartDemoRequest {
        scenario: scenario.into(),
        series_count: 6,
        days: 200,
        horizon: 14,
        ..Default::default()
    }
}

pub fn demo_result(op: &pb::Operation) -> pb::DemoResult {
    match op.result.as_ref().and_then(|r| r.result.clone()) {
        Some(pb::operation_result::Result::Demo(d)) => d,
        other => panic!("operation has no demo result: {other:?}"),
    }
}

pub async fn alias_run(registry_url: &str) -> Option<String> {
    let mut r = registry_client(registry_url).await;
    match r
        .get_alias(capstan_proto::registry::v1::GetAliasRequest {
            alias: "demo-production".into(),
        })
        .await
    {
        Ok(a) => Some(a.into_inner().run_id),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("GetAlias: {s}"),
    }
}
