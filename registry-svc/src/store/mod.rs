//! Storage: the [`RegistryStore`] trait for metadata (SQLite and Postgres behind one
//! SQL implementation; SQLite's writes go through one writer thread) and the [`blobs::BlobStore`] trait for artifact content
//! (filesystem and S3-compatible). Nothing here knows gRPC.

pub mod blobs;
pub mod sql;
mod sqlite_writer;
mod stmt;

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    domain::{
        alias::{Alias, AliasHistoryEntry, AliasWrite},
        run::{Run, RunStatus},
        Micros,
    },
    error::Result,
};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub model_type: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub name_prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunOrder {
    CreateTime { desc: bool },
    Metric { name: String, desc: bool },
}

/// What the store's announcements of alias changes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeHint {
    /// From now on every alias change is announced; changes before may have been missed.
    Listening,
    /// An alias changed.
    Changed,
    /// Announcements stopped (the connection was lost); `Listening` follows when they resume.
    Lost,
}

/// Where the previous page ended: the sort key of its last run and that run's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunCursor {
    CreateTime(Micros, Uuid),
    Metric(f64, Uuid),
}

#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// Succeeds once the database answers.
    async fn ping(&self) -> Result<()>;

    /// Whether this process is the only writer (embedded SQLite), so that reads may be
    /// served from memory without missing another replica's change.
    fn single_writer(&self) -> bool;

    /// Inserts `run`; when its `request_id` was used before, returns that earlier run and
    /// `false` instead.
    async fn insert_run(&self, run: &Run) -> Result<(Run, bool)>;
    async fn get_run(&self, id: Uuid) -> Result<Option<Run>>;
    /// Replaces the run if it is still at `expected_version`; `false` if it moved on.
    async fn update_run(&self, run: &Run, expected_version: i64) -> Result<bool>;
    async fn list_runs(
        &self,
        filter: &RunFilter,
        order: &RunOrder,
        after: Option<&RunCursor>,
        limit: usize,
    ) -> Result<Vec<Run>>;
    /// Marks FAILED every RUNNING run whose heartbeat is older than its timeout.
    async fn fail_expired_runs(&self, now: Micros) -> Result<u64>;

    async fn get_alias(&self, alias: &str) -> Result<Option<Alias>>;
    async fn list_aliases(&self, after: Option<&str>, limit: usize) -> Result<Vec<Alias>>;
    /// Applies one compare-and-swap change and its history entry atomically.
    async fn write_alias(&self, write: &AliasWrite) -> Result<AliasHistoryEntry>;
    /// Newest first, revisions below `before` when given.
    async fn alias_history(
        &self,
        alias: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AliasHistoryEntry>>;
    /// Oldest first, revisions above `after`.
    async fn alias_changes(
        &self,
        alias: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AliasHistoryEntry>>;
    /// The latest history revision of every alias that ever existed.
    async fn alias_revisions(&self) -> Result<Vec<(String, i64)>>;

    /// Announcements of alias changes made by any process (Postgres LISTEN/NOTIFY), for as
    /// long as the stream is polled; `None` where only this process writes.
    fn alias_change_hints(&self) -> Option<BoxStream<'static, ChangeHint>>;
}
