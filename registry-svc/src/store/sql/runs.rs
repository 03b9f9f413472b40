//! Runs in SQL: one table, with tag and metric index tables kept by triggers.

use capstan_server::db::Backend;
use sqlx::Row;
use uuid::Uuid;

use super::{
    db_error,
    rows::{attachments_json, run_from_row, to_json, RUN_COLS},
    run_filter,
    stmt::Stmt,
    SqlStore,
};
use crate::{
    domain::{
        ports::RunDeletion,
        runs::{filter::Filter, ModelRun, RunCursor, RunOrder},
        Micros,
    },
    error::Result,
};

pub(super) async fn insert(store: &SqlStore, run: &ModelRun) -> Result<(ModelRun, bool)> {
    // One statement (triggers derive the tag and metric index rows), two in a
    // namespace's first run, which creates it; namespaces are never removed.
    let insert = Stmt::new(
        "INSERT INTO runs (name, params, tags, metrics, status, status_message, \
         run_id, request_id, model_type, create_time, update_time, heartbeat_time, \
         heartbeat_timeout_ms, version, namespace, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         ON CONFLICT (namespace, request_id) DO NOTHING",
    )
    .bind_run_contents(run)
    .bind(run.id.to_string())
    .bind(run.request_id.as_deref())
    .bind(&run.model_type)
    .bind(run.create_time)
    .bind(run.update_time)
    .bind(run.heartbeat_time)
    .bind(run.heartbeat_timeout_ms)
    .bind(run.version)
    .bind(&run.namespace)
    .bind(&run.created_by)
    .bind(&run.updated_by);
    let inserted = if store.namespace_known(&run.namespace) {
        store.write.one(insert).await?.affected
    } else {
        let create = Stmt::new(
            "INSERT INTO namespaces (name, creator, create_time) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&run.namespace)
        .bind(&run.created_by)
        .bind(run.create_time);
        let done = store.write.run(vec![create, insert]).await?;
        store.remember_namespace(&run.namespace);
        done.last().map_or(0, |o| o.affected)
    };
    if inserted == 0 {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs r WHERE r.namespace = $1 AND r.request_id = $2"
        ))
        .bind(&run.namespace)
        .bind(run.request_id.as_deref())
        .fetch_one(&store.read)
        .await
        .map_err(db_error)?;
        return Ok((run_from_row(&row)?, false));
    }
    Ok((run.clone(), true))
}

pub(super) async fn get(store: &SqlStore, namespace: &str, id: Uuid) -> Result<Option<ModelRun>> {
    let row = sqlx::query(&format!(
        "SELECT {RUN_COLS} FROM runs r WHERE r.run_id = $1 AND r.namespace = $2 \
         AND r.delete_time IS NULL"
    ))
    .bind(id.to_string())
    .bind(namespace)
    .fetch_optional(&store.read)
    .await
    .map_err(db_error)?;
    row.as_ref().map(run_from_row).transpose()
}

pub(super) async fn update(
    store: &SqlStore,
    run: &ModelRun,
    expected_version: i64,
) -> Result<bool> {
    // One statement: triggers rewrite the index rows when tags or metrics changed.
    let (uri, sha, size, media_type) = match &run.artifact {
        Some(a) => (
            Some(a.uri.to_string()),
            Some(a.sha256.clone()),
            Some(a.size_bytes),
            a.media_type.clone(),
        ),
        None => (None, None, None, String::new()),
    };
    let updated = store
        .write
        .one(
            Stmt::new(
                "UPDATE runs SET name = $1, params = $2, tags = $3, metrics = $4, status = $5, \
                 status_message = $6, artifact_uri = $7, artifact_sha256 = $8, \
                 artifact_size_bytes = $9, update_time = $10, heartbeat_time = $11, \
                 heartbeat_timeout_ms = $12, version = $13, updated_by = $14, \
                 artifact_media_type = $15, artifacts = $16 \
                 WHERE run_id = $17 AND version = $18 AND delete_time IS NULL",
            )
            .bind_run_contents(run)
            .bind(uri)
            .bind(sha)
            .bind(size)
            .bind(run.update_time)
            .bind(run.heartbeat_time)
            .bind(run.heartbeat_timeout_ms)
            .bind(run.version)
            .bind(&run.updated_by)
            .bind(media_type)
            .bind(attachments_json(&run.attachments))
            .bind(run.id.to_string())
            .bind(expected_version),
        )
        .await?;
    Ok(updated.affected == 1)
}

pub(super) async fn list(
    store: &SqlStore,
    namespace: &str,
    filter: Option<&Filter>,
    order: &RunOrder,
    after: Option<&RunCursor>,
    limit: usize,
) -> Result<Vec<ModelRun>> {
    let driver = match (store.backend, filter) {
        (Backend::Sqlite, Some(f)) => run_filter::driver(store, f, limit).await?,
        _ => None,
    };
    let mut sql = Stmt::new(format!("SELECT {RUN_COLS} FROM "));
    // SQLite keeps a CROSS JOIN's left side outside: the driving index entries first.
    let join = match &driver {
        Some(d) => {
            sql.push(&format!("{} d CROSS JOIN runs r", d.table));
            " CROSS JOIN "
        }
        None => {
            sql.push("runs r");
            // A plain join: either planner picks the order.
            ", "
        }
    };
    // Keyed by the metric row's own run_id, so that the (key, value, run_id) index yields
    // the whole order.
    let (key_expr, id_expr, desc) = match order {
        RunOrder::CreateTime { desc } => ("r.create_time", "r.run_id", *desc),
        RunOrder::Metric { desc, .. } => {
            sql.push(&format!("{join}run_metrics m"));
            ("m.value", "m.run_id", *desc)
        }
    };
    sql.push(" WHERE ");
    match &driver {
        Some(d) => {
            run_filter::index_match(&mut sql, d.condition, "d", store.backend);
            sql.push(" AND r.run_id = d.run_id");
        }
        None => {
            sql.push("1 = 1");
        }
    }
    let np = sql.arg(namespace);
    sql.push(&format!(
        " AND r.namespace = {np} AND r.delete_time IS NULL"
    ));
    if let RunOrder::Metric { name, .. } = order {
        let p = sql.arg(name.as_str());
        sql.push(&format!(" AND m.run_id = r.run_id AND m.key = {p}"));
    }
    if let Some(f) = filter {
        sql.push(" AND ");
        run_filter::push(&mut sql, f, store.backend);
    }
    let cmp = if desc { "<" } else { ">" };
    match after {
        Some(RunCursor::CreateTime(t, id)) => {
            let (tp, ip) = (sql.arg(*t), sql.arg(id.to_string()));
            sql.push(&format!(" AND ({key_expr}, {id_expr}) {cmp} ({tp}, {ip})"));
        }
        Some(RunCursor::Metric(v, id)) => {
            let (vp, ip) = (sql.arg(*v), sql.arg(id.to_string()));
            sql.push(&format!(" AND ({key_expr}, {id_expr}) {cmp} ({vp}, {ip})"));
        }
        None => {}
    }
    let dir = if desc { "DESC" } else { "ASC" };
    let lp = sql.arg(limit as i64);
    sql.push(&format!(
        " ORDER BY {key_expr} {dir}, {id_expr} {dir} LIMIT {lp}"
    ));
    let rows = sql.query().fetch_all(&store.read).await.map_err(db_error)?;
    rows.iter().map(run_from_row).collect()
}

pub(super) async fn fail_expired(store: &SqlStore, now: Micros) -> Result<u64> {
    let n = store
        .write
        .one(
            Stmt::new(
                "UPDATE runs SET status = 'FAILED', \
                 status_message = 'heartbeat timeout: no UpdateRun within heartbeat_timeout', \
                 update_time = $1, version = version + 1 \
                 WHERE status = 'RUNNING' AND heartbeat_timeout_ms > 0 AND delete_time IS NULL \
                 AND heartbeat_time + heartbeat_timeout_ms * 1000 < $1",
            )
            .bind(now),
        )
        .await?
        .affected;
    Ok(n)
}

pub(super) async fn delete(
    store: &SqlStore,
    namespace: &str,
    id: Uuid,
    expected_version: Option<i64>,
    now: Micros,
    actor: &str,
) -> Result<RunDeletion> {
    let run_id = id.to_string();
    // Postgres: the run's row lock orders this against alias writes, which share-lock the
    // run they point at; the check below then sees every alias committed before. (SQLite
    // has one writer.) The request id is freed for a new run.
    let mut stmts = Vec::new();
    if store.backend == Backend::Postgres {
        stmts.push(
            Stmt::new("SELECT run_id FROM runs WHERE run_id = $1 FOR UPDATE").bind(run_id.as_str()),
        );
    }
    let mark = Stmt::new(
        "UPDATE runs SET delete_time = $1, update_time = $1, updated_by = $2, \
         request_id = NULL, version = version + 1 \
         WHERE run_id = $3 AND namespace = $4 AND delete_time IS NULL \
         AND ($5 < 0 OR version = $5) \
         AND NOT EXISTS (SELECT 1 FROM aliases a WHERE a.run_id = $3)",
    )
    .bind(now)
    .bind(actor)
    .bind(run_id.as_str())
    .bind(namespace)
    .bind(expected_version.unwrap_or(-1));
    stmts.push(mark);
    let done = store.write.run(stmts).await?;
    if done.last().is_some_and(|o| o.affected == 1) {
        return Ok(RunDeletion::Deleted);
    }
    // Why not, as things are now.
    let Some(run) = get(store, namespace, id).await? else {
        return Ok(RunDeletion::Missing);
    };
    let rows = sqlx::query(
        "SELECT namespace, alias FROM aliases WHERE run_id = $1 ORDER BY namespace, alias",
    )
    .bind(run_id.as_str())
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    let aliases = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get("namespace").map_err(db_error)?,
                r.try_get("alias").map_err(db_error)?,
            ))
        })
        .collect::<Result<Vec<(String, String)>>>()?;
    if !aliases.is_empty() {
        return Ok(RunDeletion::Aliased(aliases));
    }
    Ok(RunDeletion::Moved(run.version))
}

pub(super) async fn retention_candidates(
    store: &SqlStore,
    before: Micros,
    limit: usize,
) -> Result<Vec<(String, Uuid)>> {
    let rows = sqlx::query(
        "SELECT r.namespace, r.run_id FROM runs r WHERE r.delete_time IS NULL \
         AND r.status IN ('SUCCEEDED', 'FAILED', 'CANCELLED') AND r.update_time < $1 \
         AND NOT EXISTS (SELECT 1 FROM aliases a WHERE a.run_id = r.run_id) \
         AND NOT EXISTS (SELECT 1 FROM alias_history h WHERE h.run_id = r.run_id) \
         AND NOT EXISTS (SELECT 1 FROM alias_history h WHERE h.previous_run_id = r.run_id) \
         ORDER BY r.update_time LIMIT $2",
    )
    .bind(before)
    .bind(limit as i64)
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("run_id").map_err(db_error)?;
            Ok((
                r.try_get("namespace").map_err(db_error)?,
                super::rows::parse_uuid("run_id", &id)?,
            ))
        })
        .collect()
}

pub(super) async fn purge_deleted(store: &SqlStore, before: Micros, limit: usize) -> Result<u64> {
    let rows = sqlx::query(
        "SELECT run_id FROM runs WHERE delete_time IS NOT NULL AND delete_time < $1 \
         ORDER BY delete_time LIMIT $2",
    )
    .bind(before)
    .bind(limit as i64)
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    let ids = rows
        .iter()
        .map(|r| r.try_get::<String, _>("run_id").map_err(db_error))
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        return Ok(0);
    }
    // A fixed list of ids, so that every statement removes the same runs' rows; the
    // runs go last, after what refers to them.
    let marks = (1..=ids.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let stmts = [
        "run_tags",
        "run_metrics",
        "run_params",
        "run_artifacts",
        "runs",
    ]
    .into_iter()
    .map(|table| {
        let extra = if table == "runs" {
            " AND delete_time IS NOT NULL"
        } else {
            ""
        };
        ids.iter().fold(
            Stmt::new(format!(
                "DELETE FROM {table} WHERE run_id IN ({marks}){extra}"
            )),
            |s, id| s.bind(id.as_str()),
        )
    })
    .collect();
    let done = store.write.run(stmts).await?;
    Ok(done.last().map_or(0, |o| o.affected))
}

impl Stmt {
    /// Binds the next six placeholders to what every run write stores: name, params, tags,
    /// metrics, status and status message.
    fn bind_run_contents(self, run: &ModelRun) -> Self {
        self.bind(&run.name)
            .bind(to_json(&run.params))
            .bind(to_json(&run.tags))
            .bind(to_json(&run.metrics))
            .bind(run.status.as_str())
            .bind(&run.status_message)
    }
}
