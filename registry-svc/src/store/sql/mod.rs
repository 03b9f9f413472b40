//! The SQL store. One implementation serves SQLite and Postgres: the SQL uses `$n`
//! placeholders, which both accept; reads go through sqlx's `Any` pools, writes through
//! a [`Writer`] (the Postgres pool, or SQLite's writer thread); the few dialect
//! differences (row locks, notifications) are switched on [`Backend`].

mod aliases;
mod blob_refs;
mod namespaces;
mod notify;
mod rows;
mod run_filter;
mod runs;
mod sqlite_writer;
mod stmt;

use std::{collections::HashSet, sync::RwLock};

use async_trait::async_trait;
use capstan_server::db::{classify, Backend, Connections, DbFailure};
use futures::stream::BoxStream;
use sqlx::AnyPool;
use tracing::Instrument;
use uuid::Uuid;

use self::{sqlite_writer::SqliteWriter, stmt::Writer};
use crate::{
    domain::{
        aliases::{Alias, AliasHistoryEntry, AliasWrite},
        namespaces::Namespace,
        ports::{ChangeHint, RegistryStore, RunDeletion},
        runs::{filter::Filter, ModelRun, RunCursor, RunOrder},
        Micros,
    },
    error::{Error, Result},
};

/// A database failure in the registry's terms: a lost or overloaded database is
/// unavailable (retryable), a lost race (a unique key claimed first, a serialization
/// failure) is a conflict, the rest is our bug.
fn db_error(e: sqlx::Error) -> Error {
    match classify(&e) {
        DbFailure::Unavailable => Error::unavailable("the registry database", e),
        DbFailure::Conflict | DbFailure::UniqueViolation => {
            Error::Conflict(format!("a concurrent write won: {e}"))
        }
        DbFailure::Other => Error::internal("a registry database query", e),
    }
}

pub struct SqlStore {
    read: Connections,
    write: Writer,
    backend: Backend,
    url: String,
    /// Namespaces known to exist (they are never removed): a run in one of them needs no
    /// statement creating it.
    namespaces: RwLock<HashSet<String>>,
}

impl SqlStore {
    fn namespace_known(&self, name: &str) -> bool {
        self.namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    fn remember_namespace(&self, name: &str) {
        self.namespaces
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
    }
}

async fn connections(url: &str, backend: Backend, max: u32) -> Result<Connections> {
    capstan_server::db::pool(url, backend, max, None)
        .await
        .map(Connections::from)
        .map_err(|e| Error::unavailable("the registry database (connecting)", e))
}

impl SqlStore {
    /// Connects and applies the embedded migrations of the backend. Safe when several
    /// replicas start at once: Postgres migrations run under sqlx's advisory lock.
    pub async fn connect(url: &str) -> Result<Self> {
        let backend = Backend::of_url(url).ok_or_else(|| {
            Error::invalid("database_url", "must start with sqlite: or postgres://")
        })?;
        let migrate = |pool: AnyPool| async move {
            capstan_server::db::migrate(
                &pool,
                backend,
                &sqlx::migrate!("./migrations/sqlite"),
                &sqlx::migrate!("./migrations/postgres"),
            )
            .await
            .map_err(|e| Error::unavailable("the registry database (migrating)", e))?;
            Ok::<_, Error>(pool)
        };
        let (read, write) = match backend {
            // SQLite allows one writer: one thread writes for the process (queueing writers
            // instead of failing them with SQLITE_BUSY); WAL lets the readers go on.
            Backend::Sqlite => {
                let schema = connections(url, backend, 1).await?;
                migrate(schema.pool().clone()).await?.close().await;
                let options: sqlx::sqlite::SqliteConnectOptions = url
                    .parse()
                    .map_err(|e| Error::invalid("database_url", format!("{e}")))?;
                let writer = SqliteWriter::open(options.get_filename())?;
                (connections(url, backend, 4).await?, Writer::Sqlite(writer))
            }
            Backend::Postgres => {
                let c = connections(url, backend, 16).await?;
                migrate(c.pool().clone()).await?;
                (c.clone(), Writer::Pool(c))
            }
        };
        Ok(Self {
            read,
            write,
            backend,
            url: url.to_string(),
            namespaces: RwLock::default(),
        })
    }
}

impl SqlStore {
    /// The span of one store call, under the call it serves and with its labels (for
    /// traces only; see [`capstan_server::serve::trace_span`]).
    fn span(&self, operation: &'static str) -> tracing::Span {
        capstan_server::serve::trace_span(|[request_id, operation_id, step]| {
            tracing::info_span!(
                "sql",
                otel.name = %format_args!("sql {operation}"),
                otel.kind = "client",
                db.system = match self.backend {
                    Backend::Sqlite => "sqlite",
                    Backend::Postgres => "postgresql",
                },
                db.operation = operation,
                request_id,
                operation_id,
                step,
            )
        })
    }
}

/// The trait's methods, each implemented with its feature in `runs.rs`, `aliases.rs` and
/// `notify.rs`.
#[async_trait]
impl RegistryStore for SqlStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    fn single_writer(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    async fn insert_run(&self, run: &ModelRun) -> Result<(ModelRun, bool)> {
        runs::insert(self, run)
            .instrument(self.span("insert_run"))
            .await
    }

    async fn get_run(&self, namespace: &str, id: Uuid) -> Result<Option<ModelRun>> {
        runs::get(self, namespace, id)
            .instrument(self.span("get_run"))
            .await
    }

    async fn update_run(&self, run: &ModelRun, expected_version: i64) -> Result<bool> {
        runs::update(self, run, expected_version)
            .instrument(self.span("update_run"))
            .await
    }

    async fn list_runs(
        &self,
        namespace: &str,
        filter: Option<&Filter>,
        order: &RunOrder,
        after: Option<&RunCursor>,
        limit: usize,
    ) -> Result<Vec<ModelRun>> {
        runs::list(self, namespace, filter, order, after, limit)
            .instrument(self.span("list_runs"))
            .await
    }

    async fn delete_run(
        &self,
        namespace: &str,
        id: Uuid,
        expected_version: Option<i64>,
        now: Micros,
        actor: &str,
    ) -> Result<RunDeletion> {
        runs::delete(self, namespace, id, expected_version, now, actor)
            .instrument(self.span("delete_run"))
            .await
    }

    async fn retention_candidates(
        &self,
        before: Micros,
        limit: usize,
    ) -> Result<Vec<(String, Uuid)>> {
        runs::retention_candidates(self, before, limit)
            .instrument(self.span("retention_candidates"))
            .await
    }

    async fn purge_deleted_runs(&self, before: Micros, limit: usize) -> Result<u64> {
        runs::purge_deleted(self, before, limit)
            .instrument(self.span("purge_deleted_runs"))
            .await
    }

    async fn lease_blob(
        &self,
        lease: Uuid,
        sha256: &str,
        now: Micros,
        expire: Micros,
    ) -> Result<bool> {
        blob_refs::lease(self, lease, sha256, now, expire)
            .instrument(self.span("lease_blob"))
            .await
    }

    async fn release_blob_lease(&self, lease: Uuid) -> Result<()> {
        blob_refs::release(self, lease)
            .instrument(self.span("release_blob_lease"))
            .await
    }

    async fn begin_blob_removal(&self, sha256: &str, now: Micros, expire: Micros) -> Result<bool> {
        blob_refs::begin_removal(self, sha256, now, expire)
            .instrument(self.span("begin_blob_removal"))
            .await
    }

    async fn end_blob_removal(&self, sha256: &str) -> Result<()> {
        blob_refs::end_removal(self, sha256)
            .instrument(self.span("end_blob_removal"))
            .await
    }

    async fn claim_collector(&self, holder: &str, now: Micros, expire: Micros) -> Result<bool> {
        blob_refs::claim_collector(self, holder, now, expire)
            .instrument(self.span("claim_collector"))
            .await
    }

    async fn fail_expired_runs(&self, now: Micros) -> Result<u64> {
        runs::fail_expired(self, now)
            .instrument(self.span("fail_expired_runs"))
            .await
    }

    async fn list_namespaces(
        &self,
        only: Option<&[String]>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Namespace>> {
        namespaces::list(self, only, after, limit)
            .instrument(self.span("list_namespaces"))
            .await
    }

    async fn get_alias(&self, namespace: &str, alias: &str) -> Result<Option<Alias>> {
        aliases::get(self, namespace, alias)
            .instrument(self.span("get_alias"))
            .await
    }

    async fn list_aliases(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Alias>> {
        aliases::list(self, namespace, after, limit)
            .instrument(self.span("list_aliases"))
            .await
    }

    async fn write_alias(&self, write: &AliasWrite) -> Result<AliasHistoryEntry> {
        aliases::write(self, write)
            .instrument(self.span("write_alias"))
            .await
    }

    async fn alias_history(
        &self,
        namespace: &str,
        alias: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AliasHistoryEntry>> {
        aliases::history(self, namespace, alias, before, limit)
            .instrument(self.span("alias_history"))
            .await
    }

    async fn alias_changes(
        &self,
        namespace: &str,
        alias: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AliasHistoryEntry>> {
        aliases::changes(self, namespace, alias, after, limit)
            .instrument(self.span("alias_changes"))
            .await
    }

    async fn alias_revisions(&self, namespace: &str) -> Result<Vec<(String, i64)>> {
        aliases::revisions(self, namespace)
            .instrument(self.span("alias_revisions"))
            .await
    }

    fn alias_change_hints(&self) -> Option<BoxStream<'static, ChangeHint>> {
        (self.backend == Backend::Postgres).then(|| notify::alias_notifications(self.url.clone()))
    }
}
