//! The model registry as the showcase sees it: a port, so that the demo's rules stay free
//! of gRPC. `clients::registry` implements it over registry-svc's API. Its errors are
//! this crate's [`Error`](crate::error::Error) in the demo's terms: a refused promotion
//! is `Precondition`, a lost compare-and-swap `Conflict`, an unreachable registry
//! `Unavailable`. ("Run" here is always a registry run: a model and its artifact.)

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Idempotency key: a resumed step gets the run it created before.
    pub request_id: String,
    pub name: String,
    pub model_type: String,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRef {
    pub run_id: String,
    pub model_type: String,
    pub succeeded: bool,
    /// The model's; empty when none is attached.
    pub artifact_uri: String,
    pub artifact_sha256: String,
    /// Every attached artifact's URI by name (the model is `model`).
    pub artifacts: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
}

/// What an upload is called: its file name (whose extension the URI keeps), and its
/// artifact name in the run (empty: the model) with a media type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArtifactFile<'a> {
    pub file_name: &'a str,
    pub artifact: &'a str,
    pub media_type: &'a str,
}

impl<'a> ArtifactFile<'a> {
    /// The run's model.
    pub fn model(file_name: &'a str) -> Self {
        Self {
            file_name,
            artifact: "",
            media_type: "",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactMeta {
    pub uri: String,
    pub sha256: String,
    pub size_bytes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRef {
    pub run_id: String,
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub revision: i64,
    pub run_id: String,
    pub previous_run_id: String,
    pub reason: String,
}

#[async_trait]
pub trait ModelRegistry: Send + Sync + 'static {
    /// The registry's gRPC health status (`SERVING` when well).
    async fn health(&self) -> Result<String>;
    /// Creates a RUNNING run; idempotent on `request_id`.
    async fn create_run(&self, run: NewRun) -> Result<RunRef>;
    async fn get_run(&self, run_id: &str) -> Result<RunRef>;
    /// Uploads `content` with its SHA-256 as the expected hash; returns the artifact URI.
    async fn upload_artifact(
        &self,
        run_id: &str,
        file: ArtifactFile<'_>,
        namespace: &str,
        content: Vec<u8>,
    ) -> Result<String>;
    /// Sets the metrics and marks the run SUCCEEDED.
    async fn finish_run(&self, run_id: &str, metrics: BTreeMap<String, f64>) -> Result<RunRef>;
    /// The artifact's metadata and content; refuses artifacts above `max_bytes`.
    async fn download_artifact(
        &self,
        run_id: &str,
        max_bytes: usize,
    ) -> Result<(ArtifactMeta, Vec<u8>)>;
    async fn get_alias(&self, alias: &str) -> Result<Option<AliasRef>>;
    /// Compare-and-swap on `expected_revision` (0: must not exist).
    async fn set_alias(
        &self,
        alias: &str,
        run_id: &str,
        expected_revision: i64,
        reason: &str,
    ) -> Result<AliasRef>;
    /// Guarded promotion on WAPE (lower is better); `force` overrides a refusal.
    async fn promote(
        &self,
        alias: &str,
        run_id: &str,
        force: bool,
        reason: &str,
    ) -> Result<AliasRef>;
    /// Newest first.
    async fn alias_history(&self, alias: &str, limit: usize) -> Result<Vec<HistoryEntry>>;
}
