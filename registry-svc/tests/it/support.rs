//! Starts a real registry server on port 0 (auth on) for a test database, and hands out
//! clients with tokens of each role.

use capstan_client::{registry_client, RegistryClient};
use capstan_proto::registry::v1::{self as pb};
use capstan_server::{
    auth::{issue_hs256, issue_hs256_granted, Grants, Role},
    serve::ServeOptions,
    testing::{jwt_secret, TestDb},
};
use clap::Parser;
use registry_svc::app::{self, RegistryArgs, Running};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: RegistryArgs,
}

pub struct Server {
    pub running: Running,
    pub url: String,
    secret: Vec<u8>,
    pub db: TestDb,
}

pub async fn start(db: TestDb) -> Server {
    start_with(db, &[]).await
}

pub async fn start_with(db: TestDb, extra: &[&str]) -> Server {
    let (secret_path, secret) = jwt_secret(&db.data_dir());
    let running = launch(&db, &secret_path, extra).await;
    let url = format!("http://{}", running.addr);
    Server {
        running,
        url,
        secret,
        db,
    }
}

async fn launch(db: &TestDb, secret_path: &std::path::Path, extra: &[&str]) -> Running {
    let dir = db.data_dir();
    let base = [
        "registry-svc",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--database-url",
        &db.url,
        "--jwt-secret-file",
        secret_path.to_str().unwrap(),
        "--reaper-interval-seconds",
        "1",
    ];
    let cli = Cli::parse_from(base.iter().copied().chain(extra.iter().copied()));
    let options = ServeOptions::from_args(&cli.args.common).unwrap();
    app::start(&cli.args, options).await.unwrap()
}

/// Another server on the same database and data directory: a second replica.
pub struct Replica {
    pub running: Running,
    pub url: String,
}

impl Replica {
    pub async fn stop(self) {
        self.running.shutdown.cancel();
        self.running.task.await.unwrap().unwrap();
    }
}

impl Server {
    pub async fn replica(&self) -> Replica {
        self.replica_with(&[]).await
    }

    pub async fn replica_with(&self, extra: &[&str]) -> Replica {
        // The secret file the first server was started with (same tokens on both).
        let secret_path = self.db.data_dir().join("jwt.secret");
        let running = launch(&self.db, &secret_path, extra).await;
        let url = format!("http://{}", running.addr);
        Replica { running, url }
    }

    pub fn token(&self, role: Role, subject: &str) -> String {
        issue_hs256(&self.secret, subject, role, 3600).unwrap()
    }

    pub async fn client(&self, role: Role) -> RegistryClient {
        let token = self.token(role, &format!("{role:?}-tester").to_lowercase());
        registry_client(&self.url, Some(&token), 64 << 20)
            .await
            .unwrap()
    }

    /// A client whose token grants `read` and `write` on the namespaces named.
    pub async fn granted(
        &self,
        role: Role,
        subject: &str,
        read: &[&str],
        write: &[&str],
    ) -> RegistryClient {
        let grants = Grants {
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
        };
        let token = issue_hs256_granted(&self.secret, subject, role, Some(&grants), 3600).unwrap();
        self.with_token(&token).await
    }

    pub async fn anonymous(&self) -> RegistryClient {
        registry_client(&self.url, None, 64 << 20).await.unwrap()
    }

    pub async fn with_token(&self, token: &str) -> RegistryClient {
        registry_client(&self.url, Some(token), 64 << 20)
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.running.shutdown.cancel();
        self.running.task.await.unwrap().unwrap();
    }
}

/// A SUCCEEDED run with an uploaded artifact and the given metrics.
pub async fn servable_run(c: &mut RegistryClient, name: &str, metrics: &[(&str, f64)]) -> pb::Run {
    servable_run_in(c, "", name, metrics).await
}

/// [`servable_run`] in `namespace` (empty: the default).
pub async fn servable_run_in(
    c: &mut RegistryClient,
    namespace: &str,
    name: &str,
    metrics: &[(&str, f64)],
) -> pb::Run {
    let run = c
        .create_run(pb::CreateRunRequest {
            namespace: namespace.into(),
            name: name.into(),
            model_type: "seasonal_naive".into(),
            status: pb::RunStatus::Running as i32,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    upload_in(
        c,
        namespace,
        &run.run_id,
        format!("model of {name}").into_bytes(),
    )
    .await
    .unwrap();
    c.update_run(pb::UpdateRunRequest {
        run: Some(pb::Run {
            namespace: namespace.into(),
            run_id: run.run_id.clone(),
            status: pb::RunStatus::Succeeded as i32,
            ..Default::default()
        }),
        update_mask: None,
    })
    .await
    .unwrap()
    .into_inner()
}

pub async fn upload_in(
    c: &mut RegistryClient,
    namespace: &str,
    run_id: &str,
    content: Vec<u8>,
) -> Result<pb::UploadArtifactResponse, tonic::Status> {
    upload_named(
        c,
        pb::ArtifactHeader {
            namespace: namespace.into(),
            run_id: run_id.into(),
            name: "model.json".into(),
            ..Default::default()
        },
        content,
    )
    .await
}

/// Uploads `content` under `header` (which names the run, and the artifact if any).
pub async fn upload_named(
    c: &mut RegistryClient,
    header: pb::ArtifactHeader,
    content: Vec<u8>,
) -> Result<pb::UploadArtifactResponse, tonic::Status> {
    let msgs = vec![
        pb::UploadArtifactRequest {
            payload: Some(pb::upload_artifact_request::Payload::Header(header)),
        },
        pb::UploadArtifactRequest {
            payload: Some(pb::upload_artifact_request::Payload::Chunk(content.into())),
        },
    ];
    c.upload_artifact(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

pub fn set(alias: &str, run_id: &str, expected: Option<i64>) -> pb::SetAliasRequest {
    pb::SetAliasRequest {
        alias: alias.into(),
        run_id: run_id.into(),
        expected_revision: expected,
        ..Default::default()
    }
}

/// Every file under `dir`.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every history entry of `alias`, newest first, read page by page.
pub async fn alias_history(c: &mut RegistryClient, alias: &str) -> Vec<pb::AliasHistoryEntry> {
    alias_history_in(c, "", alias).await
}

pub async fn alias_history_in(
    c: &mut RegistryClient,
    namespace: &str,
    alias: &str,
) -> Vec<pb::AliasHistoryEntry> {
    let mut history = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_alias_history(pb::ListAliasHistoryRequest {
                namespace: namespace.into(),
                alias: alias.into(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        history.extend(page.entries);
        if page.next_page_token.is_empty() {
            return history;
        }
        token = page.next_page_token;
    }
}
