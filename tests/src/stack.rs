//! A benchmarked pipeline: the release registry and N pipeline replicas on one database,
//! auth on, and the user token their clients call with.

use std::path::Path;

use capstan_client::{connect, OperationsClient, PipelineClient};
use capstan_server::{
    auth::{issue_hs256, Role},
    testing::{self, TestDb},
};

use crate::{path_str, pipeline_registry, server_flags, Service};

pub struct PipelineStack {
    pub registry: Service,
    pub pipelines: Vec<Service>,
    /// A `user` token (what demos run as).
    pub user: String,
    /// An `admin` token (for reading the registry).
    pub admin: String,
}

impl PipelineStack {
    /// `replicas` pipeline processes on `db`, named `bench-0`, `bench-1`, …; the registry
    /// on `registry_db`, or on a SQLite file without one.
    pub async fn start(
        registry_bin: &Path,
        pipeline_bin: &Path,
        db: &TestDb,
        registry_db: Option<&TestDb>,
        replicas: usize,
    ) -> anyhow::Result<PipelineStack> {
        let dir = db.data_dir();
        let (secret_path, secret) = testing::jwt_secret(&dir);
        // Pinned so that a RUST_LOG in the caller's environment cannot change the cost.
        let env = [("RUST_LOG", "info")];
        let (registry, token_file) = pipeline_registry(
            registry_bin,
            &dir,
            &secret,
            &secret_path,
            &env,
            registry_db.map(|d| d.url.as_str()),
        )?;
        let mut pipelines = Vec::new();
        for i in 0..replicas {
            let data_dir = dir.join(format!("pipeline-{i}"));
            let replica = format!("bench-{i}");
            let registry_url = registry.url();
            let mut flags = server_flags(&data_dir, &db.url, &secret_path)?;
            flags.extend([
                "--registry-url",
                &registry_url,
                "--registry-token-file",
                path_str(&token_file)?,
                "--replica-id",
                &replica,
            ]);
            pipelines.push(Service::start(
                pipeline_bin,
                &flags,
                &env,
                dir.join(format!("pipeline-{i}.log")),
            )?);
        }
        Ok(PipelineStack {
            registry,
            pipelines,
            user: issue_hs256(&secret, "bench", Role::User, 24 * 3600)?,
            admin: issue_hs256(&secret, "bench-admin", Role::Admin, 24 * 3600)?,
        })
    }

    /// Clients of replica `i`, as the user.
    pub async fn clients(&self, i: usize) -> anyhow::Result<(PipelineClient, OperationsClient)> {
        let channel = connect(&self.pipelines[i].url(), Some(&self.user)).await?;
        Ok((
            PipelineClient::new(channel.clone()),
            OperationsClient::new(channel),
        ))
    }
}
