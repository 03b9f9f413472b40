//! registry-svc and pipeline-svc in process on port 0, for the showcase demo (feature
//! `demo`: the only tests that need the registry crate).

use std::{path::Path, sync::Arc, time::Duration};

use capstan_proto::pipeline::v1 as pb;
use capstan_server::{auth::Role, config::LogFormat, serve::ServeOptions};
use pipeline_svc::{app::PipelineArgs, domain::engine::workflow::Workflow};

use super::{
    channel, operations_client,
    server::{options, pipeline_args},
    token, until_finished, TestDb, SECRET,
};

#[derive(clap::Parser)]
struct RegistryFlags {
    #[command(flatten)]
    args: registry_svc::app::RegistryArgs,
}

/// Registry flags, parsed as its binary parses them (new flags get their defaults here).
fn registry_args(
    database_url: &str,
    data_dir: &Path,
    secret_file: &Path,
    extra: &[String],
) -> registry_svc::app::RegistryArgs {
    use clap::Parser;
    let (dir, secret) = (
        data_dir.display().to_string(),
        secret_file.display().to_string(),
    );
    let base = [
        "registry-svc",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--data-dir",
        &dir,
        "--jwt-secret-file",
        &secret,
        "--database-wait-seconds",
        "5",
        "--shutdown-deadline-seconds",
        "5",
    ];
    RegistryFlags::try_parse_from(base.into_iter().chain(extra.iter().map(String::as_str)))
        .expect("registry flags")
        .args
}

/// A registry server, and the flags a pipeline server on the test's databases needs.
pub struct Base {
    /// The registry's own Postgres database (its SQLite file is beside the pipeline's).
    _registry_db: Option<TestDb>,
    pub registry: registry_svc::app::Running,
    pub registry_url: String,
    /// The registry's database URL.
    pub registry_args_url: String,
    pub pipeline_args: PipelineArgs,
}

impl Base {
    pub async fn start(db: &TestDb) -> Base {
        Self::start_with(db, &[]).await
    }

    /// With `registry_extra` flags for the registry (such as the OpenID issuers it trusts).
    pub async fn start_with(db: &TestDb, registry_extra: &[String]) -> Base {
        capstan_server::telemetry::init_tracing(LogFormat::Text);
        let dir = db.dir.path().to_path_buf();
        let secret_file = dir.join("jwt.secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let (registry_pg, registry_db) = if db.is_postgres() {
            let pg = TestDb::postgres().await;
            let url = pg.url.clone();
            (Some(pg), url)
        } else {
            let file = dir.join("registry.db");
            (None, format!("sqlite://{}?mode=rwc", file.display()))
        };
        let registry_args = registry_args(
            &registry_db,
            &dir.join("registry"),
            &secret_file,
            registry_extra,
        );
        let registry_options =
            ServeOptions::from_args(&registry_args.common).expect("registry auth");
        let registry = registry_svc::app::start(&registry_args, registry_options)
            .await
            .expect("registry starts");
        let registry_url = format!("http://{}", registry.addr);
        let token_file = dir.join("registry.token");
        std::fs::write(&token_file, token("pipeline-svc", Role::Service)).unwrap();
        let pipeline_args = pipeline_args(
            &db.url,
            &dir.join("pipeline"),
            &[
                "--registry-url",
                &registry_url,
                "--registry-token-file",
                &token_file.display().to_string(),
            ],
        );
        Base {
            _registry_db: registry_pg,
            registry,
            registry_url,
            registry_args_url: registry_db,
            pipeline_args,
        }
    }
}

pub struct Stack {
    _registry_db: Option<TestDb>,
    pub registry: registry_svc::app::Running,
    pub registry_url: String,
    pub pipeline: pipeline_svc::app::Running,
    pub pipeline_url: String,
    pub args: PipelineArgs,
}

impl Stack {
    /// A registry and a pipeline server on `db`; `tweak` adjusts the pipeline's flags.
    pub async fn start(
        db: &TestDb,
        tweak: impl FnOnce(&mut PipelineArgs),
        extra: Vec<Arc<dyn Workflow>>,
    ) -> Stack {
        Stack::on(Base::start(db).await, tweak, extra).await
    }

    /// Adds a pipeline server to `base`.
    pub async fn on(
        base: Base,
        tweak: impl FnOnce(&mut PipelineArgs),
        extra: Vec<Arc<dyn Workflow>>,
    ) -> Stack {
        let mut args = base.pipeline_args;
        tweak(&mut args);
        let pipeline = pipeline_svc::app::start_with(&args, options(), extra)
            .await
            .expect("pipeline starts");
        let pipeline_url = format!("http://{}", pipeline.addr);
        Stack {
            _registry_db: base._registry_db,
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
        capstan_client::AuthedChannel,
    >;

pub async fn pipeline_client(url: &str, token: &str) -> PipelineClient {
    PipelineClient::new(channel(url, token).await)
}

pub async fn registry_client(url: &str) -> capstan_client::RegistryClient {
    capstan_client::registry_client(url, Some(&token("test-admin", Role::Admin)), 8 << 20)
        .await
        .expect("registry client")
}

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
    let events = until_finished(&mut stream, "the demo").await;
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
            ..Default::default()
        })
        .await
    {
        Ok(a) => Some(a.into_inner().run_id),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("GetAlias: {s}"),
    }
}
