//! The SQL store: SQLite and Postgres through sqlx's `Any` driver, with `$n` placeholders
//! both accept. Dialect differences (row locks, SKIP LOCKED, notifications, pool shape)
//! are switched on [`Backend`].
//!
//! - `migrations`: the schema, applied at start-up;
//! - this file: connecting, and what every write shares (lease fencing, notifications,
//!   refusals, error classification);
//! - `operations`: the [`OperationStore`](crate::domain::engine::ports::OperationStore);
//! - `record`: how one change is written (the operation row, its step, its event);
//! - `jobs`: the [`JobQueue`](crate::domain::engine::ports::JobQueue);
//! - `admission`: concurrency keys and the per-owner limit that claims and DIRECT starts obey;
//! - `retention`: the [`RetentionStore`](crate::domain::engine::ports::RetentionStore);
//! - `rows`: reading rows back into domain types;
//! - `provisioning`: the [`ProvisioningStore`](crate::domain::provisioning::ports::ProvisioningStore).

mod admission;
mod jobs;
mod migrations;
mod operations;
mod provisioning;
mod record;
mod retention;
mod rows;

use std::path::Path;

use capstan_server::db::{Backend, DbFailure};
use sqlx::{AnyConnection, AnyPool, Executor};
use uuid::Uuid;

use self::rows::status_col;
use super::graphs::{graphs_dir, SqlGraphDatabases};
use crate::{
    domain::engine::{operation::OpStatus, ports::Lease},
    error::{Error, Result},
};

const OPS_CHANNEL: &str = "capstan_operations";
const JOBS_CHANNEL: &str = "capstan_jobs";

/// A database error in the domain's terms: a lost connection, a pool timeout or a
/// restarting server is unavailable (retryable), a lost serialization race a conflict,
/// anything else internal. Logged here, with its cause.
pub(super) fn db_error(e: sqlx::Error) -> Error {
    match capstan_server::db::classify(&e) {
        DbFailure::Unavailable => {
            tracing::warn!(error = %e, "database unavailable");
            Error::unavailable_from("database unavailable", e)
        }
        DbFailure::Conflict => Error::Conflict(format!("a concurrent transaction won: {e}")),
        DbFailure::UniqueViolation | DbFailure::Other => {
            tracing::error!(error = %e, "database error");
            Error::internal_from("database error", e)
        }
    }
}

pub(super) fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    tracing::error!(what, %detail, "corrupt row");
    Error::internal(format!("stored {what} is unreadable: {detail}"))
}

pub struct SqlStore {
    read: AnyPool,
    write: AnyPool,
    backend: Backend,
    url: String,
    /// Tags this process's notifications so that it does not wake itself.
    replica: String,
}

/// On Postgres the pipeline's tables (and its migration history) live in their own
/// schema, so that registry-svc and pipeline-svc may share one database.
pub const POSTGRES_SCHEMA: &str = "capstan_pipeline";

async fn ensure_schema(url: &str) -> Result<()> {
    let mut conn = <AnyConnection as sqlx::Connection>::connect(url)
        .await
        .map_err(|e| Error::unavailable_from("cannot connect to the database", e))?;
    match conn
        .execute(format!("CREATE SCHEMA IF NOT EXISTS {POSTGRES_SCHEMA}").as_str())
        .await
    {
        Ok(_) => Ok(()),
        // Replicas starting together race on the catalog; the schema exists either way.
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            Ok(())
        }
        Err(e) => Err(db_error(e)),
    }
}

/// Opens a pool whose every connection gets WAL and a busy timeout (SQLite) or the
/// pipeline's schema (Postgres).
async fn pool(url: &str, backend: Backend, max: u32) -> Result<AnyPool> {
    capstan_server::db::pool(url, backend, max, Some(POSTGRES_SCHEMA))
        .await
        .map_err(|e| Error::unavailable_from("cannot connect to the database", e))
}

impl SqlStore {
    /// Connects and applies the embedded migrations of the backend. Safe when several
    /// replicas start at once: Postgres migrations run under sqlx's advisory lock.
    pub async fn connect(url: &str, replica: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or_else(|| {
            Error::invalid("database_url", "must start with sqlite: or postgres://")
        })?;
        if backend == Backend::Postgres {
            ensure_schema(url).await?;
        }
        let (read, write) = match backend {
            // SQLite allows one writer: a single write connection queues writers in the
            // process instead of failing them with SQLITE_BUSY; WAL lets readers go on.
            Backend::Sqlite => {
                let write = pool(url, backend, 1).await?;
                (pool(url, backend, 4).await?, write)
            }
            // Separate pools: however many watchers read, operations keep connections to
            // write their progress.
            Backend::Postgres => (pool(url, backend, 12).await?, pool(url, backend, 8).await?),
        };
        migrations::migrate(&write, backend).await?;
        Ok(Self {
            read,
            write,
            backend,
            url: url.to_string(),
            replica: replica.to_string(),
        })
    }

    /// The graphs' databases that go with this store: SQLite files under
    /// `{data_dir}/graphs`, or one schema per graph in this Postgres database.
    pub fn graph_databases(&self, data_dir: &Path) -> SqlGraphDatabases {
        match self.backend {
            Backend::Sqlite => SqlGraphDatabases::Sqlite {
                dir: graphs_dir(data_dir),
            },
            Backend::Postgres => SqlGraphDatabases::Postgres {
                pool: self.write.clone(),
            },
        }
    }

    pub(super) fn skip_locked(&self) -> &'static str {
        match self.backend {
            // One write connection: claims are serialized anyway.
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE OF j SKIP LOCKED",
        }
    }

    /// Checks that `lease` is current and keeps it so until the transaction ends: on
    /// Postgres the job row is share-locked, so a claim cannot slip in between this
    /// check and the write it fences (SQLite's single writer serializes them anyway).
    pub(super) async fn hold_lease(&self, conn: &mut AnyConnection, lease: &Lease) -> Result<()> {
        let held = sqlx::query(&format!(
            "SELECT lease_token FROM jobs WHERE operation_id = $1 AND lease_token = $2 \
             AND state = 'leased'{}",
            match self.backend {
                Backend::Sqlite => "",
                Backend::Postgres => " FOR SHARE",
            }
        ))
        .bind(lease.operation_id.to_string())
        .bind(lease.token)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
        match held {
            Some(_) => Ok(()),
            None => Err(self.refusal(conn, lease.operation_id, None).await?),
        }
    }

    pub(super) fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// Wakes other replicas (Postgres only), inside the caller's transaction so that the
    /// hint is sent only if the change commits.
    pub(super) async fn notify(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        what: &str,
    ) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(format!("{} {what}", self.replica))
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Tells why a guarded write touched no row: the operation is gone, finished, cannot
    /// make the requested move, or (when none of those) is leased by another worker.
    pub(super) async fn refusal(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        requested: Option<OpStatus>,
    ) -> Result<Error> {
        let row = sqlx::query("SELECT status FROM operations WHERE operation_id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(Error::not_found("operation", id));
        };
        let status = status_col(&row)?;
        Ok(match requested {
            _ if status.is_terminal() => Error::Precondition(format!(
                "operation {id} is already {}; it cannot change",
                status.as_str()
            )),
            Some(next) if !status.can_move_to(next) => Error::Precondition(format!(
                "operation {id} cannot move from {} to {}",
                status.as_str(),
                next.as_str()
            )),
            _ => Error::LeaseLost(format!("operation {id} is leased by another worker now")),
        })
    }
}

/// `'A', 'B'` from status names (constants of the domain, never user input).
pub(super) fn sql_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items
        .into_iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize a stored value");
        "null".into()
    })
}
