//! Aliases in SQL: the current value of each alias, and its history appended by a
//! trigger in the same statement as every change.

use capstan_server::db::Backend;
use sqlx::Row;

use super::{
    db_error,
    rows::{
        alias_from_row, history_from_row, parse_opt_uuid, parse_uuid, ALIAS_COLS, HISTORY_COLS,
    },
    stmt::Stmt,
    SqlStore,
};
use crate::{
    domain::aliases::{Alias, AliasHistoryEntry, AliasWrite},
    error::{Error, Missing, Result},
};

pub(super) async fn get(store: &SqlStore, namespace: &str, alias: &str) -> Result<Option<Alias>> {
    let row = sqlx::query(&format!(
        "SELECT {ALIAS_COLS} FROM aliases WHERE namespace = $1 AND alias = $2"
    ))
    .bind(namespace)
    .bind(alias)
    .fetch_optional(&store.read)
    .await
    .map_err(db_error)?;
    row.as_ref().map(alias_from_row).transpose()
}

pub(super) async fn list(
    store: &SqlStore,
    namespace: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Alias>> {
    let rows = sqlx::query(&format!(
        "SELECT {ALIAS_COLS} FROM aliases WHERE namespace = $1 AND alias > $2 \
         ORDER BY alias LIMIT $3"
    ))
    .bind(namespace)
    .bind(after.unwrap_or(""))
    .bind(limit as i64)
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    rows.iter().map(alias_from_row).collect()
}

pub(super) async fn write(store: &SqlStore, w: &AliasWrite) -> Result<AliasHistoryEntry> {
    let Some(run_id) = w.run_id else {
        return delete(store, w).await;
    };
    // One statement: the history entry is appended by a trigger in the same statement,
    // so a write holds the (SQLite: single) write connection for one round trip. It
    // writes only while the run is not deleted; on Postgres the run's share lock orders it
    // against a DeleteRun (see `runs::delete`).
    let live_run = format!(
        "EXISTS (SELECT 1 FROM runs WHERE run_id = $RUN AND delete_time IS NULL{})",
        match store.backend {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        }
    );
    let write = match w.expected_revision {
        Some(expected) if expected > 0 => Stmt::returning(format!(
            "UPDATE aliases SET previous_run_id = run_id, run_id = $1, description = $2, \
             revision = revision + 1, update_time = $3, updated_by = $4, last_action = $5, \
             last_reason = $6 WHERE alias = $7 AND revision = $8 AND namespace = $9 AND {} \
             RETURNING revision, previous_run_id",
            live_run.replace("$RUN", "$1")
        ))
        .bind(run_id.to_string())
        .bind(&w.description)
        .bind(w.time)
        .bind(&w.actor)
        .bind(w.action.as_str())
        .bind(&w.reason)
        .bind(&w.alias)
        .bind(expected)
        .bind(&w.namespace),
        // No expectation: create or replace. Expected 0: create only (a conflict
        // updates nothing). A re-created alias continues the numbering of its history.
        _ => Stmt::returning(format!(
            "INSERT INTO aliases (alias, run_id, description, revision, update_time, updated_by, \
             last_action, last_reason, previous_run_id, namespace) \
             SELECT $1, $2, $3, (SELECT COALESCE(MAX(revision), 0) + 1 FROM alias_history \
             WHERE namespace = $9 AND alias = $1), $4, $5, $6, $7, '', $9 WHERE {} \
             ON CONFLICT (namespace, alias) DO UPDATE SET previous_run_id = aliases.run_id, \
             run_id = excluded.run_id, description = excluded.description, \
             revision = aliases.revision + 1, update_time = excluded.update_time, \
             updated_by = excluded.updated_by, last_action = excluded.last_action, \
             last_reason = excluded.last_reason WHERE $8 = 1 \
             RETURNING revision, previous_run_id",
            live_run.replace("$RUN", "$2")
        ))
        .bind(&w.alias)
        .bind(run_id.to_string())
        .bind(&w.description)
        .bind(w.time)
        .bind(&w.actor)
        .bind(w.action.as_str())
        .bind(&w.reason)
        .bind(i64::from(w.expected_revision.is_none()))
        .bind(&w.namespace),
    };
    let written = store.write.one(write).await.map_err(|e| concurrent(w, e))?;
    if written.returned.is_none() {
        return Err(refused(store, w).await);
    }
    Ok(w.entry(
        written.int(0)?,
        parse_opt_uuid("previous_run_id", written.text(1)?)?,
    ))
}

pub(super) async fn history(
    store: &SqlStore,
    namespace: &str,
    alias: &str,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<AliasHistoryEntry>> {
    let rows = sqlx::query(&format!(
        "SELECT {HISTORY_COLS} FROM alias_history \
         WHERE namespace = $4 AND alias = $1 AND revision < $2 ORDER BY revision DESC LIMIT $3"
    ))
    .bind(alias)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit as i64)
    .bind(namespace)
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    rows.iter().map(history_from_row).collect()
}

pub(super) async fn changes(
    store: &SqlStore,
    namespace: &str,
    alias: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<AliasHistoryEntry>> {
    let rows = sqlx::query(&format!(
        "SELECT {HISTORY_COLS} FROM alias_history \
         WHERE namespace = $4 AND alias = $1 AND revision > $2 ORDER BY revision LIMIT $3"
    ))
    .bind(alias)
    .bind(after)
    .bind(limit as i64)
    .bind(namespace)
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    rows.iter().map(history_from_row).collect()
}

pub(super) async fn revisions(store: &SqlStore, namespace: &str) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT alias, MAX(revision) AS revision FROM alias_history WHERE namespace = $1 \
         GROUP BY alias",
    )
    .bind(namespace)
    .fetch_all(&store.read)
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

/// A unique violation in an alias write means another writer won the race.
fn concurrent(w: &AliasWrite, e: Error) -> Error {
    match e {
        Error::Conflict(_) => Error::Conflict(format!(
            "alias {:?} was changed concurrently; retry",
            w.alias
        )),
        e => e,
    }
}

/// Why a conditional alias write changed nothing, from the alias as it is now.
async fn refused(store: &SqlStore, w: &AliasWrite) -> Error {
    if let Some(run_id) = w.run_id {
        match super::runs::get(store, &w.namespace, run_id).await {
            Ok(Some(_)) => {}
            Ok(None) => return Error::NotFound(Missing::Run(run_id)),
            Err(e) => return e,
        }
    }
    let current = match get(store, &w.namespace, &w.alias).await {
        Ok(current) => current,
        Err(e) => return e,
    };
    if current.is_none() && w.run_id.is_none() {
        return Error::NotFound(Missing::Alias(w.alias.clone()));
    }
    match w.check_revision(current.map(|a| a.revision)) {
        Err(e) => e,
        // It changed again between the write and this read.
        Ok(()) => Error::Conflict(format!(
            "alias {:?} was changed concurrently; retry",
            w.alias
        )),
    }
}

/// Appends the alias's DELETE entry and removes it, atomically.
async fn delete(store: &SqlStore, w: &AliasWrite) -> Result<AliasHistoryEntry> {
    let entry = Stmt::returning(format!(
        "INSERT INTO alias_history (namespace, alias, revision, run_id, previous_run_id, \
         action, reason, actor, description, time) \
         SELECT namespace, alias, revision + 1, '', run_id, $3, $4, $5, $6, $7 FROM aliases \
         WHERE namespace = $8 AND alias = $1 AND ($2 < 0 OR revision = $2){} \
         RETURNING revision, previous_run_id",
        store.backend.for_update()
    ))
    .bind(&w.alias)
    .bind(w.expected_revision.unwrap_or(-1))
    .bind(w.action.as_str())
    .bind(&w.reason)
    .bind(&w.actor)
    .bind(&w.description)
    .bind(w.time)
    .bind(&w.namespace);
    // The alias's revision trails its newest history entry only when one was just
    // appended above: otherwise this deletes nothing.
    let delete = Stmt::new(
        "DELETE FROM aliases WHERE namespace = $2 AND alias = $1 AND revision < \
         (SELECT MAX(revision) FROM alias_history WHERE namespace = $2 AND alias = $1)",
    )
    .bind(&w.alias)
    .bind(&w.namespace);
    let done = store
        .write
        .run(vec![entry, delete])
        .await
        .map_err(|e| concurrent(w, e))?;
    match done.first() {
        Some(o) if o.returned.is_some() => {
            Ok(w.entry(o.int(0)?, Some(parse_uuid("run_id", o.text(1)?)?)))
        }
        _ => Err(refused(store, w).await),
    }
}
