//! A pipeline server in process on a test database, on port 0, with no registry (only
//! the demo needs one: see `stack`), and the flags it runs with.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use capstan_server::{
    auth::{Role, Verifier},
    serve::ServeOptions,
};
use clap::Parser;
use pipeline_svc::{app::PipelineArgs, domain::engine::workflow::Workflow};

use super::{channel, token, OperationsClient, ProvisioningClient, TestDb, SECRET};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: PipelineArgs,
}

/// Pipeline flags for a server on `database_url` with its data under `data_dir`, parsed
/// as the binary parses them (so new flags get their defaults here too).
pub fn pipeline_args(database_url: &str, data_dir: &Path, extra: &[&str]) -> PipelineArgs {
    let secret = data_dir.join("jwt.secret");
    std::fs::create_dir_all(data_dir).expect("data dir");
    std::fs::write(&secret, SECRET).expect("secret");
    let dir = data_dir.display().to_string();
    let secret = secret.display().to_string();
    let mut argv = vec![
        "pipeline-svc",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--data-dir",
        &dir,
        "--jwt-secret-file",
        &secret,
        "--lease-seconds",
        "2",
        "--poll-interval-millis",
        "100",
        "--watch-heartbeat-seconds",
        "1",
        "--database-wait-seconds",
        "5",
        "--shutdown-deadline-seconds",
        "5",
    ];
    argv.extend_from_slice(extra);
    Flags::try_parse_from(argv).expect("flags").args
}

pub fn options() -> ServeOptions {
    ServeOptions::for_tests(Verifier::hs256(SECRET))
}

pub struct Server {
    pub running: pipeline_svc::app::Running,
    pub url: String,
    pub args: PipelineArgs,
}

impl Server {
    pub async fn start(args: PipelineArgs) -> Server {
        Self::start_with(args, Vec::new()).await
    }

    /// A server that runs `extra` workflows too.
    pub async fn start_with(args: PipelineArgs, extra: Vec<Arc<dyn Workflow>>) -> Server {
        capstan_server::telemetry::init_tracing(capstan_server::config::LogFormat::Text);
        let running = pipeline_svc::app::start_with(&args, options(), extra)
            .await
            .expect("pipeline starts");
        let url = format!("http://{}", running.addr);
        Server { running, url, args }
    }

    pub async fn stop(self) {
        self.running.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.running.task).await;
    }

    pub async fn provisioning(&self, subject: &str, role: Role) -> ProvisioningClient {
        ProvisioningClient::new(channel(&self.url, &token(subject, role)).await)
    }

    pub async fn operations(&self, subject: &str, role: Role) -> OperationsClient {
        OperationsClient::new(channel(&self.url, &token(subject, role)).await)
    }
}

/// One test's pipeline database, graph files, and servers on them.
pub struct Env {
    pub db: TestDb,
    pub database_url: String,
    pub data_dir: PathBuf,
}

impl Env {
    pub fn new(db: TestDb) -> Env {
        let database_url = db.url.clone();
        let data_dir = db.dir.path().join("pipeline");
        Env {
            db,
            database_url,
            data_dir,
        }
    }

    pub fn postgres(&self) -> bool {
        self.db.is_postgres()
    }

    pub fn args(&self, extra: &[&str]) -> PipelineArgs {
        pipeline_args(&self.database_url, &self.data_dir, extra)
    }

    pub async fn server(&self, extra: &[&str]) -> Server {
        Server::start(self.args(extra)).await
    }
}
