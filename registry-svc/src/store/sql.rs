//! The SQL store. One implementation serves SQLite and Postgres: the SQL uses `$n`
//! placeholders, which both accept; reads go through sqlx's `Any` pools, writes through
//! a [`Writer`] (the Postgres pool, or SQLite's writer thread); the few dialect
//! differences (row locks, notifications) are switched on [`Backend`].

use async_trait::async_trait;
use capstan_server::db::Connections;
use futures::{stream::BoxStream, StreamExt};
use sqlx::{any::AnyRow, postgres::PgListener, AnyPool, Row};
use std::time::Duration;
use uuid::Uuid;

pub use super::stmt::db_error;
use super::{
    sqlite_writer::SqliteWriter,
    stmt::{Stmt, Writer},
    ChangeHint, RegistryStore, RunCursor, RunFilter, RunOrder,
};
use crate::{
    domain::{
        alias::{Alias, AliasAction, AliasHistoryEntry, AliasWrite},
        run::{Artifact, Run, RunStatus},
        Micros,
    },
    error::{Error, Result},
};
use capstan_proto::artifact_uri::ArtifactUri;

pub use capstan_server::db::Backend;

fn backend_of(url: &str) -> Result<Backend> {
    Backend::of_url(url)
        .ok_or_else(|| Error::invalid("database_url", "must start with sqlite: or postgres://"))
}

pub struct SqlStore {
    read: Connections,
    write: Writer,
    backend: Backend,
    url: String,
}

fn unreachable_db(e: sqlx::Error) -> Error {
    Error::Unavailable(format!("cannot connect to the database: {e}"))
}

async fn connections(url: &str, backend: Backend, max: u32) -> Result<Connections> {
    capstan_server::db::pool(url, backend, max, None)
        .await
        .map(Connections::from)
        .map_err(unreachable_db)
}

impl SqlStore {
    /// Connects and applies the embedded migrations of the backend. Safe when several
    /// replicas start at once: Postgres migrations run under sqlx's advisory lock.
    pub async fn connect(url: &str) -> Result<Self> {
        let backend = backend_of(url)?;
        let migrate = |pool: AnyPool| async move {
            capstan_server::db::migrate(
                &pool,
                backend,
                &sqlx::migrate!("./migrations/sqlite"),
                &sqlx::migrate!("./migrations/postgres"),
            )
            .await
            .map_err(|e| Error::Unavailable(format!("database migration failed: {e}")))?;
            Ok::<_, Error>(pool)
        };
        let (read, write) = match backend {
            // SQLite allows one writer: one thread writes for the process (queueing writers
            // instead of failing them with SQLITE_BUSY); WAL lets the readers go on.
            Backend::Sqlite => {
                let pool = capstan_server::db::pool(url, backend, 1, None)
                    .await
                    .map_err(unreachable_db)?;
                migrate(pool).await?.close().await;
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
        })
    }
}

impl SqlStore {
    /// A unique violation in an alias write means another writer won the race.
    fn concurrent(w: &AliasWrite, e: Error) -> Error {
        match e {
            Error::Aborted(_) => Error::Aborted(format!(
                "alias {:?} was changed concurrently; retry",
                w.alias
            )),
            e => e,
        }
    }

    /// Why a conditional alias write changed nothing, from the alias as it is now.
    async fn refused(&self, w: &AliasWrite) -> Error {
        let current = match self.get_alias(&w.alias).await {
            Ok(current) => current,
            Err(e) => return e,
        };
        if current.is_none() && w.run_id.is_none() {
            return Error::NotFound(format!("alias {:?} does not exist", w.alias));
        }
        match w.check_revision(current.map(|a| a.revision)) {
            Err(e) => e,
            // It changed again between the write and this read.
            Ok(()) => Error::Aborted(format!(
                "alias {:?} was changed concurrently; retry",
                w.alias
            )),
        }
    }

    /// Appends the alias's DELETE entry and removes it, atomically.
    async fn delete_alias(&self, w: &AliasWrite) -> Result<AliasHistoryEntry> {
        let entry = Stmt::returning(format!(
            "INSERT INTO alias_history (alias, revision, run_id, previous_run_id, action, reason, \
             actor, description, time) \
             SELECT alias, revision + 1, '', run_id, $3, $4, $5, $6, $7 FROM aliases \
             WHERE alias = $1 AND ($2 < 0 OR revision = $2){} \
             RETURNING revision, previous_run_id",
            self.backend.for_update()
        ))
        .bind(&w.alias)
        .bind(w.expected_revision.unwrap_or(-1))
        .bind(w.action.as_str())
        .bind(&w.reason)
        .bind(&w.actor)
        .bind(&w.description)
        .bind(w.time);
        // The alias's revision trails its newest history entry only when one was just
        // appended above: otherwise this deletes nothing.
        let delete = Stmt::new(
            "DELETE FROM aliases WHERE alias = $1 \
             AND revision < (SELECT MAX(revision) FROM alias_history WHERE alias = $1)",
        )
        .bind(&w.alias);
        let done = self
            .write
            .run(vec![entry, delete])
            .await
            .map_err(|e| Self::concurrent(w, e))?;
        match done.first() {
            Some(o) if o.returned.is_some() => {
                Ok(w.entry(o.int(0)?, Some(parse_uuid("run_id", o.text(1)?)?)))
            }
            _ => Err(self.refused(w).await),
        }
    }
}

const RUN_COLS: &str =
    "r.run_id, r.request_id, r.name, r.model_type, r.params, r.tags, r.metrics, r.status, \
     r.status_message, r.artifact_uri, r.artifact_sha256, r.artifact_size_bytes, r.create_time, \
     r.update_time, r.heartbeat_time, r.heartbeat_timeout_ms, r.version";

fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    tracing::error!(what, %detail, "corrupt row");
    Error::Internal(format!("stored {what} is unreadable: {detail}"))
}

fn parse_uuid(col: &str, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| corrupt(col, e))
}

/// An empty text stands for "none".
fn parse_opt_uuid(col: &str, s: &str) -> Result<Option<Uuid>> {
    (!s.is_empty()).then(|| parse_uuid(col, s)).transpose()
}

fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid> {
    parse_uuid(col, &row.try_get::<String, _>(col).map_err(db_error)?)
}

fn opt_uuid_col(row: &AnyRow, col: &str) -> Result<Option<Uuid>> {
    parse_opt_uuid(col, &row.try_get::<String, _>(col).map_err(db_error)?)
}

fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let s: String = row.try_get(col).map_err(db_error)?;
    serde_json::from_str(&s).map_err(|e| corrupt(col, e))
}

fn run_from_row(row: &AnyRow) -> Result<Run> {
    let status: String = row.try_get("status").map_err(db_error)?;
    let uri: Option<String> = row.try_get("artifact_uri").map_err(db_error)?;
    let artifact = match uri {
        Some(uri) => Some(Artifact {
            uri: ArtifactUri::parse(&uri).map_err(|e| corrupt("artifact_uri", e))?,
            sha256: row
                .try_get::<Option<String>, _>("artifact_sha256")
                .map_err(db_error)?
                .unwrap_or_default(),
            size_bytes: row
                .try_get::<Option<i64>, _>("artifact_size_bytes")
                .map_err(db_error)?
                .unwrap_or(0),
        }),
        None => None,
    };
    Ok(Run {
        id: uuid_col(row, "run_id")?,
        request_id: row.try_get("request_id").map_err(db_error)?,
        name: row.try_get("name").map_err(db_error)?,
        model_type: row.try_get("model_type").map_err(db_error)?,
        params: json_col(row, "params")?,
        tags: json_col(row, "tags")?,
        metrics: json_col(row, "metrics")?,
        status: RunStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        status_message: row.try_get("status_message").map_err(db_error)?,
        artifact,
        create_time: row.try_get("create_time").map_err(db_error)?,
        update_time: row.try_get("update_time").map_err(db_error)?,
        heartbeat_time: row.try_get("heartbeat_time").map_err(db_error)?,
        heartbeat_timeout_ms: row.try_get("heartbeat_timeout_ms").map_err(db_error)?,
        version: row.try_get("version").map_err(db_error)?,
    })
}

fn alias_from_row(row: &AnyRow) -> Result<Alias> {
    Ok(Alias {
        alias: row.try_get("alias").map_err(db_error)?,
        run_id: uuid_col(row, "run_id")?,
        description: row.try_get("description").map_err(db_error)?,
        revision: row.try_get("revision").map_err(db_error)?,
        update_time: row.try_get("update_time").map_err(db_error)?,
        updated_by: row.try_get("updated_by").map_err(db_error)?,
    })
}

fn history_from_row(row: &AnyRow) -> Result<AliasHistoryEntry> {
    let action: String = row.try_get("action").map_err(db_error)?;
    Ok(AliasHistoryEntry {
        alias: row.try_get("alias").map_err(db_error)?,
        revision: row.try_get("revision").map_err(db_error)?,
        run_id: opt_uuid_col(row, "run_id")?,
        previous_run_id: opt_uuid_col(row, "previous_run_id")?,
        action: AliasAction::parse(&action).ok_or_else(|| corrupt("action", &action))?,
        reason: row.try_get("reason").map_err(db_error)?,
        actor: row.try_get("actor").map_err(db_error)?,
        description: row.try_get("description").map_err(db_error)?,
        time: row.try_get("time").map_err(db_error)?,
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

impl Stmt {
    /// Binds the next six placeholders to what every run write stores: name, params, tags,
    /// metrics, status and status message.
    fn bind_run_contents(self, run: &Run) -> Self {
        self.bind(&run.name)
            .bind(to_json(&run.params))
            .bind(to_json(&run.tags))
            .bind(to_json(&run.metrics))
            .bind(run.status.as_str())
            .bind(&run.status_message)
    }
}

#[async_trait]
impl RegistryStore for SqlStore {
    fn single_writer(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn insert_run(&self, run: &Run) -> Result<(Run, bool)> {
        // One statement: triggers derive the tag and metric index rows.
        let inserted = self
            .write
            .one(
                Stmt::new(
                    "INSERT INTO runs (name, params, tags, metrics, status, status_message, \
                     run_id, request_id, model_type, create_time, update_time, heartbeat_time, \
                     heartbeat_timeout_ms, version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                     ON CONFLICT (request_id) DO NOTHING",
                )
                .bind_run_contents(run)
                .bind(run.id.to_string())
                .bind(run.request_id.as_deref())
                .bind(&run.model_type)
                .bind(run.create_time)
                .bind(run.update_time)
                .bind(run.heartbeat_time)
                .bind(run.heartbeat_timeout_ms)
                .bind(run.version),
            )
            .await?
            .affected;
        if inserted == 0 {
            let row = sqlx::query(&format!(
                "SELECT {RUN_COLS} FROM runs r WHERE r.request_id = $1"
            ))
            .bind(run.request_id.as_deref())
            .fetch_one(&self.read)
            .await
            .map_err(db_error)?;
            return Ok((run_from_row(&row)?, false));
        }
        Ok((run.clone(), true))
    }

    async fn get_run(&self, id: Uuid) -> Result<Option<Run>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs r WHERE r.run_id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn update_run(&self, run: &Run, expected_version: i64) -> Result<bool> {
        // One statement: triggers rewrite the index rows when tags or metrics changed.
        let (uri, sha, size) = match &run.artifact {
            Some(a) => (
                Some(a.uri.to_string()),
                Some(a.sha256.clone()),
                Some(a.size_bytes),
            ),
            None => (None, None, None),
        };
        let updated = self
            .write
            .one(
                Stmt::new(
                    "UPDATE runs SET name = $1, params = $2, tags = $3, metrics = $4, status = $5, \
                     status_message = $6, artifact_uri = $7, artifact_sha256 = $8, \
                     artifact_size_bytes = $9, update_time = $10, heartbeat_time = $11, \
                     heartbeat_timeout_ms = $12, version = $13 \
                     WHERE run_id = $14 AND version = $15",
                )
                .bind_run_contents(run)
                .bind(uri)
                .bind(sha)
                .bind(size)
                .bind(run.update_time)
                .bind(run.heartbeat_time)
                .bind(run.heartbeat_timeout_ms)
                .bind(run.version)
                .bind(run.id.to_string())
                .bind(expected_version),
            )
            .await?;
        Ok(updated.affected == 1)
    }

    async fn list_runs(
        &self,
        filter: &RunFilter,
        order: &RunOrder,
        after: Option<&RunCursor>,
        limit: usize,
    ) -> Result<Vec<Run>> {
        let mut sql = Stmt::new(format!("SELECT {RUN_COLS} FROM runs r"));
        let (key_expr, desc) = match order {
            RunOrder::CreateTime { desc } => ("r.create_time", *desc),
            RunOrder::Metric { name, desc } => {
                let p = sql.arg(name.clone());
                sql.push(&format!(
                    " JOIN run_metrics m ON m.run_id = r.run_id AND m.key = {p}"
                ));
                ("m.value", *desc)
            }
        };
        sql.push(" WHERE 1 = 1");
        if let Some(s) = filter.status {
            let p = sql.arg(s.as_str());
            sql.push(&format!(" AND r.status = {p}"));
        }
        if let Some(mt) = &filter.model_type {
            let p = sql.arg(mt.clone());
            sql.push(&format!(" AND r.model_type = {p}"));
        }
        if let Some(prefix) = &filter.name_prefix {
            // substr rather than LIKE: SQLite's LIKE ignores case, Postgres's does not.
            let p = sql.arg(prefix.clone());
            sql.push(&format!(" AND substr(r.name, 1, length({p})) = {p}"));
        }
        for (k, v) in &filter.tags {
            let (kp, vp) = (sql.arg(k.clone()), sql.arg(v.clone()));
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM run_tags t WHERE t.run_id = r.run_id AND t.key = {kp} AND t.value = {vp})"
            ));
        }
        let cmp = if desc { "<" } else { ">" };
        match after {
            Some(RunCursor::CreateTime(t, id)) => {
                let (tp, ip) = (sql.arg(*t), sql.arg(id.to_string()));
                sql.push(&format!(" AND ({key_expr}, r.run_id) {cmp} ({tp}, {ip})"));
            }
            Some(RunCursor::Metric(v, id)) => {
                let (vp, ip) = (sql.arg(*v), sql.arg(id.to_string()));
                sql.push(&format!(" AND ({key_expr}, r.run_id) {cmp} ({vp}, {ip})"));
            }
            None => {}
        }
        let dir = if desc { "DESC" } else { "ASC" };
        let lp = sql.arg(limit as i64);
        sql.push(&format!(
            " ORDER BY {key_expr} {dir}, r.run_id {dir} LIMIT {lp}"
        ));
        let rows = sql.query().fetch_all(&self.read).await.map_err(db_error)?;
        rows.iter().map(run_from_row).collect()
    }

    async fn fail_expired_runs(&self, now: Micros) -> Result<u64> {
        let n = self
            .write
            .one(
                Stmt::new(
                    "UPDATE runs SET status = 'FAILED', \
                     status_message = 'heartbeat timeout: no UpdateRun within heartbeat_timeout', \
                     update_time = $1, version = version + 1 \
                     WHERE status = 'RUNNING' AND heartbeat_timeout_ms > 0 \
                     AND heartbeat_time + heartbeat_timeout_ms * 1000 < $1",
                )
                .bind(now),
            )
            .await?
            .affected;
        Ok(n)
    }

    async fn get_alias(&self, alias: &str) -> Result<Option<Alias>> {
        let row = sqlx::query(
            "SELECT alias, run_id, description, revision, update_time, updated_by FROM aliases WHERE alias = $1",
        )
        .bind(alias)
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(alias_from_row).transpose()
    }

    async fn list_aliases(&self, after: Option<&str>, limit: usize) -> Result<Vec<Alias>> {
        let rows = sqlx::query(
            "SELECT alias, run_id, description, revision, update_time, updated_by FROM aliases \
             WHERE alias > $1 ORDER BY alias LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(alias_from_row).collect()
    }

    async fn write_alias(&self, w: &AliasWrite) -> Result<AliasHistoryEntry> {
        let Some(run_id) = w.run_id else {
            return self.delete_alias(w).await;
        };
        // One statement: the history entry is appended by a trigger in the same statement,
        // so a write holds the (SQLite: single) write connection for one round trip.
        let write = match w.expected_revision {
            Some(expected) if expected > 0 => Stmt::returning(
                "UPDATE aliases SET previous_run_id = run_id, run_id = $1, description = $2, \
                 revision = revision + 1, update_time = $3, updated_by = $4, last_action = $5, \
                 last_reason = $6 WHERE alias = $7 AND revision = $8 \
                 RETURNING revision, previous_run_id",
            )
            .bind(run_id.to_string())
            .bind(&w.description)
            .bind(w.time)
            .bind(&w.actor)
            .bind(w.action.as_str())
            .bind(&w.reason)
            .bind(&w.alias)
            .bind(expected),
            // No expectation: create or replace. Expected 0: create only (a conflict
            // updates nothing). A re-created alias continues the numbering of its history.
            _ => Stmt::returning(
                "INSERT INTO aliases (alias, run_id, description, revision, update_time, updated_by, \
                 last_action, last_reason, previous_run_id) \
                 VALUES ($1, $2, $3, (SELECT COALESCE(MAX(revision), 0) + 1 FROM alias_history \
                 WHERE alias = $1), $4, $5, $6, $7, '') \
                 ON CONFLICT (alias) DO UPDATE SET previous_run_id = aliases.run_id, \
                 run_id = excluded.run_id, description = excluded.description, \
                 revision = aliases.revision + 1, update_time = excluded.update_time, \
                 updated_by = excluded.updated_by, last_action = excluded.last_action, \
                 last_reason = excluded.last_reason WHERE $8 = 1 \
                 RETURNING revision, previous_run_id",
            )
            .bind(&w.alias)
            .bind(run_id.to_string())
            .bind(&w.description)
            .bind(w.time)
            .bind(&w.actor)
            .bind(w.action.as_str())
            .bind(&w.reason)
            .bind(i64::from(w.expected_revision.is_none())),
        };
        let written = self
            .write
            .one(write)
            .await
            .map_err(|e| Self::concurrent(w, e))?;
        if written.returned.is_none() {
            return Err(self.refused(w).await);
        }
        Ok(w.entry(
            written.int(0)?,
            parse_opt_uuid("previous_run_id", written.text(1)?)?,
        ))
    }

    async fn alias_history(
        &self,
        alias: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AliasHistoryEntry>> {
        let rows = sqlx::query(
            "SELECT alias, revision, run_id, previous_run_id, action, reason, actor, description, time \
             FROM alias_history WHERE alias = $1 AND revision < $2 ORDER BY revision DESC LIMIT $3",
        )
        .bind(alias)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit as i64)
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(history_from_row).collect()
    }

    async fn alias_changes(
        &self,
        alias: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AliasHistoryEntry>> {
        let rows = sqlx::query(
            "SELECT alias, revision, run_id, previous_run_id, action, reason, actor, description, time \
             FROM alias_history WHERE alias = $1 AND revision > $2 ORDER BY revision LIMIT $3",
        )
        .bind(alias)
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(history_from_row).collect()
    }

    async fn alias_revisions(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT alias, MAX(revision) AS revision FROM alias_history GROUP BY alias",
        )
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("alias").map_err(db_error)?,
                    r.try_get("revision").map_err(db_error)?,
                ))
            })
            .collect()
    }

    fn alias_change_hints(&self) -> Option<BoxStream<'static, ChangeHint>> {
        (self.backend == Backend::Postgres).then(|| alias_notifications(self.url.clone()))
    }
}

/// Pauses between attempts to listen again: from the first to the last, doubling.
const RELISTEN_PAUSES: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

/// `LISTEN capstan_alias` (the alias-history trigger's channel) as [`ChangeHint`]s; a lost
/// connection is said (`Lost`) and listened on again, so that nobody trusts a quiet
/// listener that is in fact deaf.
fn alias_notifications(url: String) -> BoxStream<'static, ChangeHint> {
    enum State {
        Connect(Duration),
        Listen(PgListener),
    }
    futures::stream::unfold(State::Connect(Duration::ZERO), move |state| {
        let url = url.clone();
        async move {
            match state {
                State::Connect(pause) => {
                    tokio::time::sleep(pause).await;
                    match listen(&url).await {
                        Ok(l) => Some((ChangeHint::Listening, State::Listen(l))),
                        Err(e) => {
                            let next = (pause * 2).clamp(RELISTEN_PAUSES.0, RELISTEN_PAUSES.1);
                            tracing::warn!(error = %e, retry_in = ?next, "cannot LISTEN for alias changes; watchers poll and alias reads go to the database meanwhile");
                            Some((ChangeHint::Lost, State::Connect(next)))
                        }
                    }
                }
                State::Listen(mut l) => match l.try_recv().await {
                    Ok(Some(_)) => Some((ChangeHint::Changed, State::Listen(l))),
                    Ok(None) => {
                        tracing::warn!("alias notification connection lost; listening again");
                        Some((ChangeHint::Lost, State::Connect(RELISTEN_PAUSES.0)))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "alias notification listener failed; listening again");
                        Some((ChangeHint::Lost, State::Connect(RELISTEN_PAUSES.0)))
                    }
                },
            }
        }
    })
    .boxed()
}

async fn listen(url: &str) -> std::result::Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect(url).await?;
    // A lost connection must surface as `None`, not be mended silently in `try_recv`.
    l.eager_reconnect(false);
    l.listen("capstan_alias").await?;
    Ok(l)
}
