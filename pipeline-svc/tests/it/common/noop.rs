//! Engines in process running the `noop` workflow, and a [`TestFlow`] that says what its
//! operations do and records what ran.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use pipeline_svc::{
    domain::{
        engine::{
            operation::{Event, EventType, ExecutionMode},
            retry::RetryPolicy,
            workflow::{Workflow, Workflows},
            Engine, EngineConfig, StartOperation,
        },
        noop::{self, Noop, NoopParams, Probe},
    },
    store::sql::SqlStore,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub async fn store(url: &str, replica: &str) -> Arc<SqlStore> {
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
        step_retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(20),
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        step_timeout: None,
        operation_timeout: None,
        max_running_per_owner: 0,
        faults: Default::default(),
    }
}

/// What a test's noop operations do (`fail_at`, `unavailable`, `failing_compensation`,
/// `progress_per_step`, `step_delay` become their parameters) and what the test sees of
/// them: a log of the steps run and compensated (`s1`, `undo:s1`), and a gate that holds
/// one step at its start until a permit is given (forever when none is).
#[derive(Clone, Default)]
pub struct TestFlow {
    pub log: Arc<Mutex<Vec<String>>>,
    pub fail_at: Option<usize>,
    /// `(step, times)`: that step fails as unavailable its first `times` runs.
    pub unavailable: Option<(usize, usize)>,
    pub failing_compensation: Option<usize>,
    pub progress_per_step: usize,
    pub step_delay: Duration,
    pub gate: Option<(usize, Arc<Semaphore>)>,
    /// Concurrency keys its operations hold.
    pub keys: Vec<String>,
}

#[async_trait]
impl Probe for TestFlow {
    async fn step(&self, index: usize) {
        self.log.lock().unwrap().push(format!("s{index}"));
        if let Some((at, gate)) = &self.gate {
            if *at == index {
                drop(gate.acquire().await);
            }
        }
    }

    fn compensation(&self, index: usize) {
        self.log.lock().unwrap().push(format!("undo:s{index}"));
    }
}

impl TestFlow {
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The noop workflow, observed by this flow.
    pub fn workflow(&self) -> Arc<dyn Workflow> {
        Noop::observed(Arc::new(self.clone()))
    }

    /// An operation of `steps` steps that does what this flow says.
    pub fn request(&self, steps: usize, mode: Option<ExecutionMode>) -> StartOperation {
        StartOperation {
            kind: noop::KIND.into(),
            params: NoopParams {
                steps,
                sleep_ms: self.step_delay.as_millis() as u64,
                progress_per_step: self.progress_per_step,
                fail_at: self.fail_at,
                unavailable: self.unavailable,
                fail_compensation_at: self.failing_compensation,
                keys: self.keys.clone(),
            }
            .to_json(),
            request_id: None,
            mode,
            timeout: None,
        }
    }

    /// An engine with its worker and listeners running.
    pub fn engine(&self, store: Arc<SqlStore>, cfg: EngineConfig) -> Arc<Engine> {
        let engine = self.idle_engine(store, cfg);
        engine.spawn_background();
        engine
    }

    /// An engine without worker or listeners: queued jobs stay queued.
    pub fn idle_engine(&self, store: Arc<SqlStore>, cfg: EngineConfig) -> Arc<Engine> {
        let workflows = Workflows::new([self.workflow()]).expect("one workflow");
        Engine::new(store, cfg, workflows, CancellationToken::new())
    }
}

/// An engine on `store` whose queued jobs stay queued (no worker claims them).
pub fn idle_engine(store: Arc<SqlStore>) -> Arc<Engine> {
    TestFlow::default().idle_engine(store, engine_config("idle"))
}

/// An operation of `steps` steps that do nothing.
pub fn start_request(steps: usize, mode: Option<ExecutionMode>) -> StartOperation {
    TestFlow::default().request(steps, mode)
}

/// Every event of the operation from `after` to the terminal one (heartbeats dropped).
pub async fn collect(engine: &Arc<Engine>, id: uuid::Uuid, after: i64) -> Vec<Event> {
    let mut rx = engine.watch(id, None, after).await.expect("watch");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if e.kind == EventType::Heartbeat => {}
            Ok(Some(e)) => out.push(e),
            Ok(None) => return out,
            Err(_) => panic!("operation {id} did not finish in 30 s; events so far: {out:#?}"),
        }
    }
}

/// Asserts that `events` are exactly the sequences `from..` with no gap or repeat.
pub fn assert_gapless(events: &[Event], from: i64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, from + i as i64, "event {i} of {events:#?}");
    }
}
