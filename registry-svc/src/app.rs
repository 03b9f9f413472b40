//! Configuration and start-up of a registry server.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use capstan_server::{
    config::CommonArgs,
    error::Chain,
    serve::{self, ServeOptions},
};
use clap::Args;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::domain::registry::AliasReads;

use crate::{
    api::{RegistryApi, RegistryServiceServer},
    domain::{ports::RegistryStore, registry::Registry},
    error::Error,
    store::{blobs, sql::SqlStore},
};

#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// gRPC address; port 0 picks a free one (the log says which).
    #[arg(long, env = "CAPSTAN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub common: CommonArgs,

    /// Where artifact content goes: `fs` (under the data dir) or `s3://bucket[/prefix]`
    /// (credentials and endpoint from the AWS_* environment variables).
    #[arg(long, env = "CAPSTAN_ARTIFACT_STORE", default_value = "fs")]
    pub artifact_store: String,

    /// How often RUNNING runs are checked against their heartbeat timeout.
    #[arg(long, env = "CAPSTAN_REAPER_INTERVAL_SECONDS", default_value_t = 5)]
    pub reaper_interval_seconds: u64,

    /// How long a deleted run's rows are kept before they are purged (its blobs follow
    /// once no run refers to them).
    #[arg(long, env = "CAPSTAN_DELETED_RUN_GRACE_SECONDS", default_value_t = 7 * 24 * 3600)]
    pub deleted_run_grace_seconds: u64,

    /// How often the blob collector looks for blobs no run refers to (one replica at a
    /// time); 0 turns it off.
    #[arg(long, env = "CAPSTAN_BLOB_GC_INTERVAL_SECONDS", default_value_t = 3600)]
    pub blob_gc_interval_seconds: u64,

    /// Blobs younger than this stay, referenced or not.
    #[arg(long, env = "CAPSTAN_BLOB_GC_GRACE_SECONDS", default_value_t = 24 * 3600)]
    pub blob_gc_grace_seconds: u64,

    /// Deletes terminal runs not changed for this many days that no alias points at and no
    /// alias history entry names (then purged as any deleted run); 0 keeps runs forever.
    #[arg(long, env = "CAPSTAN_RUN_RETENTION_DAYS", default_value_t = 0)]
    pub run_retention_days: u64,

    /// How GetAlias reads on Postgres: `fresh` asks the database every time, so a read on
    /// any replica sees every write acknowledged before it; `cached` serves from memory,
    /// cleared by the database's change notifications, so another replica's change may
    /// show a few milliseconds late (never more than 2 s). SQLite, the only writer, is
    /// always served from memory, exactly.
    #[arg(long, env = "CAPSTAN_ALIAS_READS", default_value = "fresh", value_parser = alias_reads)]
    pub alias_reads: AliasReads,

    /// How long start-up waits for the database before giving up.
    #[arg(long, env = "CAPSTAN_DATABASE_WAIT_SECONDS", default_value_t = 60)]
    pub database_wait_seconds: u64,
}

fn alias_reads(s: &str) -> Result<AliasReads, String> {
    match s {
        "fresh" => Ok(AliasReads::Fresh),
        "cached" => Ok(AliasReads::Cached),
        _ => Err("must be `fresh` or `cached`".into()),
    }
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub registry: Arc<Registry>,
}

/// Connects the store, retrying while the database is unavailable.
async fn connect_store(url: &str, wait: Duration) -> anyhow::Result<Arc<dyn RegistryStore>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match SqlStore::connect(url).await {
            Ok(s) => return Ok(Arc::new(s)),
            Err(e @ Error::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %Chain(&e), "database not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(anyhow::anyhow!("{}", Chain(&e)))
                    .context("cannot open the registry database")
            }
        }
    }
}

/// Binds, serves health (NOT_SERVING until the store is ready) and reflection, opens
/// storage, then serves the registry.
pub async fn start(args: &RegistryArgs, mut options: ServeOptions) -> anyhow::Result<Running> {
    args.common.validate()?;
    let listener = serve::bind(args.listen, "registry-svc").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();

    let (health, health_service) = serve::health_reporter();
    health
        .set_not_serving::<RegistryServiceServer<RegistryApi>>()
        .await;

    let url = args.common.database_url_or("registry.db");
    let store = connect_store(&url, Duration::from_secs(args.database_wait_seconds)).await?;
    let blob_store = blobs::open(&args.artifact_store, &args.common.data_dir)
        .await
        .map_err(|e| anyhow::anyhow!("{}", Chain(&e)))?;
    tracing::info!(database = %capstan_server::config::redact_url(&url), artifacts = %blob_store.describe(), "registry storage ready");
    let registry = Registry::new(store, blob_store, args.alias_reads);
    registry.spawn_reaper(
        Duration::from_secs(args.reaper_interval_seconds.max(1)),
        shutdown.clone(),
    );
    registry.spawn_purger(
        Duration::from_secs(args.reaper_interval_seconds.max(1)),
        Duration::from_secs(args.deleted_run_grace_seconds),
        (args.run_retention_days > 0)
            .then(|| Duration::from_secs(args.run_retention_days.saturating_mul(24 * 3600))),
        shutdown.clone(),
    );
    if args.blob_gc_interval_seconds > 0 {
        registry.spawn_collector(
            Duration::from_secs(args.blob_gc_interval_seconds),
            Duration::from_secs(args.blob_gc_grace_seconds),
            shutdown.clone(),
        );
    }
    registry.spawn_change_listener(shutdown.clone());

    let max = args.common.max_message_bytes;
    let api = RegistryServiceServer::new(RegistryApi::new(registry.clone(), shutdown.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let routes = tonic::service::Routes::new(health_service).add_service(api);
    options.advertise =
        vec![<RegistryServiceServer<RegistryApi> as tonic::server::NamedService>::NAME.to_string()];
    health
        .set_serving::<RegistryServiceServer<RegistryApi>>()
        .await;
    let server_shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        let res = serve::serve(listener, options, routes, server_shutdown).await;
        health
            .set_not_serving::<RegistryServiceServer<RegistryApi>>()
            .await;
        res
    });
    Ok(Running {
        addr,
        shutdown,
        task,
        registry,
    })
}
