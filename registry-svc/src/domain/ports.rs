//! What the registry needs from storage, in its own terms: [`RegistryStore`] for runs and
//! aliases, [`BlobStore`] for artifact content. `store/` implements both; the store
//! contract suites (`tests/it/contract/`) say what every implementation must do.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use uuid::Uuid;

use super::{
    aliases::{Alias, AliasHistoryEntry, AliasWrite},
    namespaces::Namespace,
    runs::{filter::Filter, ModelRun, RunCursor, RunOrder},
    Micros,
};
use crate::error::Result;

/// Where runs and aliases are kept.
///
/// Errors: a store that cannot be reached says [`Unavailable`](crate::error::Error::Unavailable);
/// a write that lost a race with another writer says [`Conflict`](crate::error::Error::Conflict).
#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// Succeeds once the database answers.
    async fn ping(&self) -> Result<()>;

    /// Whether this process is the only writer (embedded SQLite), so that reads may be
    /// served from memory without missing another replica's change.
    fn single_writer(&self) -> bool;

    /// Inserts `run`, and its namespace (created by the run's creator) if it is new; when
    /// its `request_id` was used before in the namespace, returns that earlier run and
    /// `false` instead (concurrent inserts of one request id make exactly one run).
    async fn insert_run(&self, run: &ModelRun) -> Result<(ModelRun, bool)>;
    /// The run, if it exists in `namespace`.
    async fn get_run(&self, namespace: &str, id: Uuid) -> Result<Option<ModelRun>>;
    /// Replaces the run if it is still at `expected_version`; `false` (and nothing
    /// changed) if it moved on or does not exist.
    async fn update_run(&self, run: &ModelRun, expected_version: i64) -> Result<bool>;
    /// Up to `limit` runs of `namespace` matching `filter`, in `order`, after `after`
    /// (exclusive); ties of the sort key are broken by run id in the same direction.
    async fn list_runs(
        &self,
        namespace: &str,
        filter: Option<&Filter>,
        order: &RunOrder,
        after: Option<&RunCursor>,
        limit: usize,
    ) -> Result<Vec<ModelRun>>;
    /// Marks the run deleted, unless an alias (of any namespace) points at it or it is not
    /// at `expected_version` (when given); from then on no read returns it. Checked and
    /// marked atomically: no alias write can point at the run meanwhile.
    async fn delete_run(
        &self,
        namespace: &str,
        id: Uuid,
        expected_version: Option<i64>,
        now: Micros,
        actor: &str,
    ) -> Result<RunDeletion>;
    /// Up to `limit` runs (namespace, id), oldest first, that retention may delete: not
    /// deleted, terminal, last changed before `before`, and named by no alias and by no
    /// alias history entry (as its run or previous run; a rollback may need them).
    async fn retention_candidates(
        &self,
        before: Micros,
        limit: usize,
    ) -> Result<Vec<(String, Uuid)>>;
    /// Removes up to `limit` runs deleted before `before`, with every row that refers to
    /// them (tags, metrics, params, artifact references); returns how many.
    async fn purge_deleted_runs(&self, before: Micros, limit: usize) -> Result<u64>;
    /// Leases the blob `sha256` for an upload or a reference being written, until
    /// `expire`; `false` (nothing leased) while the collector is removing that blob.
    async fn lease_blob(
        &self,
        lease: Uuid,
        sha256: &str,
        now: Micros,
        expire: Micros,
    ) -> Result<bool>;
    async fn release_blob_lease(&self, lease: Uuid) -> Result<()>;
    /// Marks the blob as being removed (until `expire`) when no run, deleted or not, refers
    /// to it and no lease unexpired at `now` holds it; `true` when marked. Ordered against
    /// [`RegistryStore::lease_blob`] of the same blob: one of the two wins.
    async fn begin_blob_removal(&self, sha256: &str, now: Micros, expire: Micros) -> Result<bool>;
    /// The blob is gone (or stayed): leases of it may be taken again.
    async fn end_blob_removal(&self, sha256: &str) -> Result<()>;
    /// Takes or renews the collector's lease for `holder` until `expire`; `false` while
    /// another holder's lease is unexpired at `now`. One replica collects at a time.
    async fn claim_collector(&self, holder: &str, now: Micros, expire: Micros) -> Result<bool>;
    /// Marks FAILED every RUNNING run whose heartbeat is older than its timeout at `now`,
    /// bumping its version; returns how many.
    async fn fail_expired_runs(&self, now: Micros) -> Result<u64>;

    /// Up to `limit` namespaces by name, after `after` (exclusive), among `only` when given.
    async fn list_namespaces(
        &self,
        only: Option<&[String]>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Namespace>>;

    /// Aliases are named within their namespace: every alias method takes it.
    async fn get_alias(&self, namespace: &str, alias: &str) -> Result<Option<Alias>>;
    /// Up to `limit` aliases of `namespace` by name, after `after` (exclusive).
    async fn list_aliases(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Alias>>;
    /// Applies one compare-and-swap change and appends its history entry, atomically.
    ///
    /// The alias's revision goes up by one on every change, and a re-created alias goes on
    /// from its last history revision: revisions of one alias are gapless and unique.
    /// Refusals: a write whose `expected_revision` does not match is a `Conflict`; a
    /// deletion of an absent alias is `NotFound`; of concurrent writes expecting the same
    /// revision exactly one succeeds.
    async fn write_alias(&self, write: &AliasWrite) -> Result<AliasHistoryEntry>;
    /// Newest first, revisions below `before` when given.
    async fn alias_history(
        &self,
        namespace: &str,
        alias: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AliasHistoryEntry>>;
    /// Oldest first, revisions above `after`.
    async fn alias_changes(
        &self,
        namespace: &str,
        alias: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AliasHistoryEntry>>;
    /// The latest history revision of every alias that ever existed in `namespace`.
    async fn alias_revisions(&self, namespace: &str) -> Result<Vec<(String, i64)>>;

    /// Announcements of alias changes made by any process, for as long as the stream is
    /// polled (one source per replica, costing at most one round trip per interval while
    /// nothing changes); `None` where only this process writes.
    fn alias_change_hints(&self) -> Option<BoxStream<'static, ChangeHint>>;
}

/// What [`RegistryStore::delete_run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunDeletion {
    Deleted,
    /// No such run in the namespace (or it is deleted already).
    Missing,
    /// These aliases (namespace, alias) point at it; nothing changed.
    Aliased(Vec<(String, String)>),
    /// The run is at another version; nothing changed.
    Moved(i64),
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

/// Content-addressed artifact blobs: an upload is staged while its hash is computed, then
/// committed under that hash; identical content is stored once.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Starts writing a new blob whose hash is not known yet.
    async fn stage(&self) -> Result<Box<dyn StagedBlob>>;
    /// Streams the blob with this SHA-256 in non-empty chunks of at most `chunk` bytes;
    /// `NotFound` when no such blob is stored.
    async fn read(&self, sha256: &str, chunk: usize) -> Result<BoxStream<'static, Result<Bytes>>>;
    /// Up to `limit` stored blobs in SHA-256 order, after `after` (exclusive).
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredBlob>>;
    /// Removes the blob; an absent one is no error.
    async fn delete(&self, sha256: &str) -> Result<()>;
    /// Human-readable location, for logs.
    fn describe(&self) -> String;
}

/// A blob as [`BlobStore::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    pub sha256: String,
    /// When it was written.
    pub written: Micros,
}

/// A blob being written. Dropped without [`StagedBlob::commit`] (the client went away, the
/// hash did not match), it leaves nothing behind.
#[async_trait]
pub trait StagedBlob: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    /// Moves the content to its address; `true` when identical content was already there.
    async fn commit(self: Box<Self>, sha256: &str) -> Result<bool>;
}
