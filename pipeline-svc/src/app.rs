//! Configuration and start-up of a pipeline server.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use capstan_server::{
    auth::trim_secret,
    config::{parse_bool, CommonArgs},
    serve::{self, ServeOptions},
};
use clap::{ArgAction, Args, ValueEnum};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    api::{
        self, OperationsApi, OperationsServiceServer, PipelineServiceServer, ProvisioningApi,
        ProvisioningServiceServer, ResultToPb, Results, ShowcaseApi,
    },
    clients::{embeddings::HttpEmbedder, registry::GrpcRegistry, token_file::TokenFile},
    domain::{
        engine::{
            operation::ExecutionMode,
            retention::Retention,
            workflow::{Workflow, Workflows},
            Engine, EngineConfig, Faults,
        },
        provisioning::{
            ports::{GraphDatabases, ProvisioningStore},
            service::ProvisioningService,
            workflow::{DeprovisionWorkflow, ProvisionWorkflow},
        },
        showcase::{
            embedder::{Embedder, LocalEmbedder},
            ShowcaseWorkflow,
        },
    },
    error::Error,
    store::sql::SqlStore,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KnowledgeProvider {
    /// The built-in local embedder.
    Local,
    /// An HTTP embedding provider at `--knowledge-url`.
    External,
}

#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// gRPC address; port 0 picks a free one (the log says which).
    #[arg(long, env = "CAPSTAN_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub common: CommonArgs,

    /// Where registry-svc is.
    #[arg(
        long,
        env = "CAPSTAN_REGISTRY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub registry_url: String,

    /// Bearer token (a file holding it) for calls to the registry; read again when it
    /// changes (a Kubernetes projected service-account token).
    #[arg(long, env = "CAPSTAN_REGISTRY_TOKEN_FILE")]
    pub registry_token_file: Option<PathBuf>,

    /// `true`: run operations on the replica that received them unless a request asks
    /// otherwise; `false`: queue everything for the workers.
    #[arg(long, env = "CAPSTAN_DIRECT_EXECUTION", default_value = "true",
          value_parser = parse_bool, action = ArgAction::Set)]
    pub direct_execution: bool,

    /// Idle watch streams get a heartbeat event this often.
    #[arg(long, env = "CAPSTAN_WATCH_HEARTBEAT_SECONDS", default_value_t = 15)]
    pub watch_heartbeat_seconds: u64,

    /// A worker that stops heartbeating loses its job after this long.
    #[arg(long, env = "CAPSTAN_LEASE_SECONDS", default_value_t = 30)]
    pub lease_seconds: u64,

    /// Operations this replica runs at once.
    #[arg(long, env = "CAPSTAN_WORKER_CONCURRENCY", default_value_t = 4)]
    pub worker_concurrency: usize,

    /// `false`: this replica claims no queued jobs (an API-only replica; it still runs
    /// its own DIRECT work).
    #[arg(long, env = "CAPSTAN_QUEUE_WORKERS", default_value = "true",
          value_parser = parse_bool, action = ArgAction::Set)]
    pub queue_workers: bool,

    /// How often idle workers poll when no notification woke them, and how often the
    /// replica checks that its change listener (SQLite: the event log) is alive; watchers
    /// never poll.
    #[arg(long, env = "CAPSTAN_POLL_INTERVAL_MILLIS", default_value_t = 1000)]
    pub poll_interval_millis: u64,

    /// A job claimed more often than this (its workers keep crashing) is failed.
    #[arg(long, env = "CAPSTAN_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: i64,

    /// How long one attempt of a step may run before it is cancelled and retried (or
    /// failed) by its retry policy; 0: no limit.
    #[arg(long, env = "CAPSTAN_STEP_TIMEOUT_SECONDS", default_value_t = 0)]
    pub step_timeout_seconds: u64,

    /// How long an operation may take from its start (or retry) to its end when its
    /// request sets no `timeout`; past it the operation fails and its compensations run.
    /// 0: no limit.
    #[arg(long, env = "CAPSTAN_OPERATION_TIMEOUT_SECONDS", default_value_t = 0)]
    pub operation_timeout_seconds: u64,

    /// Operations of one owner running at once, across every replica (0: no limit); the
    /// owner's later ones wait PENDING until one ends.
    #[arg(long, env = "CAPSTAN_MAX_RUNNING_PER_OWNER", default_value_t = 0)]
    pub max_running_per_owner: u32,

    /// Terminal operations (with their events, steps and jobs) are purged once they ended
    /// this many days ago; a read of a purged one says so. 0: kept forever.
    #[arg(long, env = "CAPSTAN_OPERATION_RETENTION_DAYS", default_value_t = 30)]
    pub operation_retention_days: u32,

    /// How often the retention purge runs (on one replica at a time).
    #[arg(
        long,
        env = "CAPSTAN_OPERATION_PURGE_INTERVAL_SECONDS",
        default_value_t = 3600
    )]
    pub operation_purge_interval_seconds: u64,

    /// Operations the retention purge removes per transaction.
    #[arg(long, env = "CAPSTAN_OPERATION_PURGE_BATCH", default_value_t = 500)]
    pub operation_purge_batch: usize,

    /// Names this replica in leases (default: $HOSTNAME plus a random suffix).
    #[arg(long, env = "CAPSTAN_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Embedding provider of the demo's knowledge step.
    #[arg(
        long,
        env = "CAPSTAN_KNOWLEDGE_PROVIDER",
        value_enum,
        default_value = "local"
    )]
    pub knowledge_provider: KnowledgeProvider,

    /// URL of the external embedding provider.
    #[arg(long, env = "CAPSTAN_KNOWLEDGE_URL")]
    pub knowledge_url: Option<String>,

    /// API key (a file holding it) of the external embedding provider.
    #[arg(long, env = "CAPSTAN_KNOWLEDGE_API_KEY_FILE")]
    pub knowledge_api_key_file: Option<PathBuf>,

    /// Fault injection (tests, drills): this step (of any workflow) fails after doing its
    /// work.
    #[arg(long, env = "CAPSTAN_FAIL_STEP")]
    pub fail_step: Option<String>,

    /// Fault injection: `--fail-step` fails only its first N attempts, as a transient
    /// failure the step's retry policy runs again (default: every attempt, for good).
    #[arg(long, env = "CAPSTAN_FAIL_STEP_TIMES")]
    pub fail_step_times: Option<u32>,

    /// Fault injection (tests, drills): the process aborts when this step starts.
    #[arg(long, env = "CAPSTAN_ABORT_AT_STEP")]
    pub abort_at_step: Option<String>,

    /// Fault injection (tests, drills): this step never finishes by itself; it waits
    /// until its operation is cancelled.
    #[arg(long, env = "CAPSTAN_HANG_STEP")]
    pub hang_step: Option<String>,

    /// How long start-up waits for the database before giving up.
    #[arg(long, env = "CAPSTAN_DATABASE_WAIT_SECONDS", default_value_t = 60)]
    pub database_wait_seconds: u64,
}

fn read_secret_file(flag: &str, path: &PathBuf) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))?;
    let text = String::from_utf8(trim_secret(&bytes).to_vec())
        .with_context(|| format!("{flag} {} is not UTF-8", path.display()))?;
    if text.is_empty() {
        bail!("{flag} {} is empty", path.display());
    }
    Ok(text)
}

impl PipelineArgs {
    /// Checks what clap cannot, with a message that names the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.common.validate()?;
        if !(self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://"))
        {
            bail!(
                "--registry-url (CAPSTAN_REGISTRY_URL) must start with http:// or https://, got {:?}",
                self.registry_url
            );
        }
        for (flag, value, min) in [
            (
                "--watch-heartbeat-seconds (CAPSTAN_WATCH_HEARTBEAT_SECONDS)",
                self.watch_heartbeat_seconds,
                1,
            ),
            (
                "--lease-seconds (CAPSTAN_LEASE_SECONDS)",
                self.lease_seconds,
                1,
            ),
            (
                "--worker-concurrency (CAPSTAN_WORKER_CONCURRENCY)",
                self.worker_concurrency as u64,
                1,
            ),
            (
                "--poll-interval-millis (CAPSTAN_POLL_INTERVAL_MILLIS)",
                self.poll_interval_millis,
                10,
            ),
            (
                "--max-attempts (CAPSTAN_MAX_ATTEMPTS)",
                self.max_attempts.max(0) as u64,
                1,
            ),
            (
                "--operation-purge-interval-seconds (CAPSTAN_OPERATION_PURGE_INTERVAL_SECONDS)",
                self.operation_purge_interval_seconds,
                1,
            ),
            (
                "--operation-purge-batch (CAPSTAN_OPERATION_PURGE_BATCH)",
                self.operation_purge_batch as u64,
                1,
            ),
        ] {
            if value < min {
                bail!("{flag} must be at least {min}");
            }
        }
        if self.knowledge_provider == KnowledgeProvider::External && self.knowledge_url.is_none() {
            tracing::warn!("--knowledge-provider external without --knowledge-url: the knowledge step will be SKIPPED");
        }
        Ok(())
    }

    /// Fault injection names a step of one of the workflows this server runs.
    fn check_faults(&self, workflows: &Workflows) -> anyhow::Result<()> {
        for (flag, step) in [
            ("--fail-step (CAPSTAN_FAIL_STEP)", &self.fail_step),
            (
                "--abort-at-step (CAPSTAN_ABORT_AT_STEP)",
                &self.abort_at_step,
            ),
            ("--hang-step (CAPSTAN_HANG_STEP)", &self.hang_step),
        ] {
            if let Some(step) = step {
                let names = workflows.step_names();
                if !names.contains(&step.as_str()) {
                    bail!("{flag} {step:?} is not a step; steps: {}", names.join(", "));
                }
                tracing::warn!(step = %step, "FAULT INJECTION enabled by {flag}");
            }
        }
        Ok(())
    }

    pub fn engine_config(&self) -> EngineConfig {
        let replica_id = self.replica_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "pipeline".into());
            format!("{host}-{}", &Uuid::new_v4().simple().to_string()[..8])
        });
        EngineConfig {
            replica_id,
            default_mode: if self.direct_execution {
                ExecutionMode::Direct
            } else {
                ExecutionMode::Queued
            },
            lease: Duration::from_secs(self.lease_seconds),
            worker_concurrency: self.worker_concurrency,
            queue_workers: self.queue_workers,
            poll_interval: Duration::from_millis(self.poll_interval_millis),
            watch_heartbeat: Duration::from_secs(self.watch_heartbeat_seconds),
            max_attempts: self.max_attempts,
            max_running_per_owner: self.max_running_per_owner,
            step_timeout: (self.step_timeout_seconds > 0)
                .then(|| Duration::from_secs(self.step_timeout_seconds)),
            operation_timeout: (self.operation_timeout_seconds > 0)
                .then(|| Duration::from_secs(self.operation_timeout_seconds)),
            faults: Faults {
                fail_step: self.fail_step.clone(),
                fail_step_times: self.fail_step_times,
                abort_at_step: self.abort_at_step.clone(),
                hang_step: self.hang_step.clone(),
            },
            ..EngineConfig::default()
        }
    }

    /// The knowledge step's embedding provider.
    fn embedder(&self) -> anyhow::Result<Arc<dyn Embedder>> {
        Ok(match self.knowledge_provider {
            KnowledgeProvider::Local => Arc::new(LocalEmbedder),
            KnowledgeProvider::External => Arc::new(HttpEmbedder::new(
                self.knowledge_url.clone().unwrap_or_default(),
                self.knowledge_api_key_file
                    .as_ref()
                    .map(|p| read_secret_file("--knowledge-api-key-file", p))
                    .transpose()?,
            )),
        })
    }
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub engine: Arc<Engine>,
}

/// Connects the store, retrying while the database is unavailable.
async fn connect_store(url: &str, replica: &str, wait: Duration) -> anyhow::Result<Arc<SqlStore>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match SqlStore::connect(url, replica).await {
            Ok(s) => return Ok(Arc::new(s)),
            Err(e @ Error::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "database not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(anyhow::anyhow!("{e}")).context("cannot open the pipeline database")
            }
        }
    }
}

/// Every workflow the server runs, each with the API mapping of its result: a feature
/// registers here, once.
fn features(
    args: &PipelineArgs,
    store: &Arc<SqlStore>,
) -> anyhow::Result<Vec<(Arc<dyn Workflow>, ResultToPb)>> {
    let token = args
        .registry_token_file
        .as_deref()
        .map(TokenFile::open)
        .transpose()?;
    let registry = Arc::new(GrpcRegistry::new(
        &args.registry_url,
        token,
        args.common.max_message_bytes,
    ));
    let records: Arc<dyn ProvisioningStore> = store.clone();
    let databases: Arc<dyn GraphDatabases> = Arc::new(store.graph_databases(&args.common.data_dir));
    Ok(vec![
        (
            ShowcaseWorkflow::new(registry, args.embedder()?),
            api::demo_result,
        ),
        (
            ProvisionWorkflow::new(records.clone(), databases.clone()),
            api::provisioning_result,
        ),
        (
            DeprovisionWorkflow::new(records, databases),
            api::provisioning_result,
        ),
    ])
}

/// Starts a server running the product's workflows.
pub async fn start(args: &PipelineArgs, options: ServeOptions) -> anyhow::Result<Running> {
    start_with(args, options, Vec::new()).await
}

/// Starts a server running the product's workflows and `extra` ones (tests add theirs;
/// their operations have no result on the wire). Binds first and serves health
/// NOT_SERVING until the store is ready.
pub async fn start_with(
    args: &PipelineArgs,
    options: ServeOptions,
    extra: Vec<Arc<dyn Workflow>>,
) -> anyhow::Result<Running> {
    args.validate()?;
    let listener = serve::bind(args.listen, "pipeline-svc").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let (health, health_service) = serve::health_reporter();
    set_health(&health, false).await;

    let cfg = args.engine_config();
    let url = args.common.database_url_or("pipeline.db");
    let store = connect_store(
        &url,
        &cfg.replica_id,
        Duration::from_secs(args.database_wait_seconds),
    )
    .await?;
    let features = features(args, &store)?;
    let results = Results::new(
        features
            .iter()
            .flat_map(|(w, to_pb)| w.kinds().into_iter().map(move |kind| (kind, *to_pb))),
    );
    let workflows = Workflows::new(features.into_iter().map(|(w, _)| w).chain(extra))?;
    args.check_faults(&workflows)?;
    tracing::info!(
        database = %capstan_server::config::redact_url(&url),
        replica = %cfg.replica_id,
        default_mode = cfg.default_mode.as_str(),
        registry = %args.registry_url,
        "pipeline storage ready"
    );
    let records: Arc<dyn ProvisioningStore> = store.clone();
    let engine = Engine::new(store, cfg, workflows, shutdown.clone());
    engine.spawn_background();
    if args.operation_retention_days > 0 {
        engine.spawn_purger(
            Retention {
                days: args.operation_retention_days,
                batch: args.operation_purge_batch,
            },
            Duration::from_secs(args.operation_purge_interval_seconds),
        );
    }
    let provisioning = Arc::new(ProvisioningService::new(engine.clone(), records));

    let max = args.common.max_message_bytes;
    let ops = OperationsServiceServer::new(OperationsApi::new(engine.clone(), results.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let showcase = PipelineServiceServer::new(ShowcaseApi::new(engine.clone(), results.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let provisioning = ProvisioningServiceServer::new(ProvisioningApi::new(provisioning, results))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let routes = tonic::service::Routes::new(health_service)
        .add_service(ops)
        .add_service(showcase)
        .add_service(provisioning);
    set_health(&health, true).await;
    let server_shutdown = shutdown.clone();
    let drain = engine.clone();
    let task = tokio::spawn(async move {
        let res = serve::serve(listener, options, routes, server_shutdown).await;
        set_health(&health, false).await;
        // Running operations stop at their next step boundary and release their leases.
        drain.drained().await;
        res
    });
    Ok(Running {
        addr,
        shutdown,
        task,
        engine,
    })
}

/// Every service SERVING or NOT_SERVING.
async fn set_health(health: &serve::HealthReporter, serving: bool) {
    if serving {
        health
            .set_serving::<OperationsServiceServer<OperationsApi>>()
            .await;
        health
            .set_serving::<PipelineServiceServer<ShowcaseApi>>()
            .await;
        health
            .set_serving::<ProvisioningServiceServer<ProvisioningApi>>()
            .await;
    } else {
        health
            .set_not_serving::<OperationsServiceServer<OperationsApi>>()
            .await;
        health
            .set_not_serving::<PipelineServiceServer<ShowcaseApi>>()
            .await;
        health
            .set_not_serving::<ProvisioningServiceServer<ProvisioningApi>>()
            .await;
    }
}
