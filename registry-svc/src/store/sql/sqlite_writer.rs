//! SQLite's one writer, on a thread of its own.
//!
//! sqlx runs each SQLite statement on a per-connection worker thread, so every write paid
//! several thread hand-overs (pool hand-off, request, reply) on the single writer's serial
//! path, and throughput was bound by wake-ups, not by SQLite. Here writes queue to one
//! thread that owns the connection: what has queued runs back to back in one transaction
//! and commits once, and each caller is answered only after that commit.

use std::{path::Path, sync::mpsc};

use capstan_server::db::{classify_code, DbFailure};
use rusqlite::{types::ValueRef, Connection, OpenFlags};
use tokio::sync::oneshot;

use super::stmt::{Outcome, Stmt, Value};
use crate::error::{Error, Result};

/// Writes committed together at most; bounds how long the first of them waits.
const MAX_BATCH: usize = 256;

struct Job {
    stmts: Vec<Stmt>,
    reply: oneshot::Sender<Result<Vec<Outcome>>>,
}

pub struct SqliteWriter {
    jobs: mpsc::Sender<Job>,
}

impl SqliteWriter {
    /// Opens the database file (already migrated) and starts the writer thread; it ends
    /// when the writer is dropped.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            c.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                 PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            )?;
            c.set_prepared_statement_cache_capacity(64);
            Ok(c)
        })
        .map_err(|e| Error::unavailable(format!("{} (opening for writing)", path.display()), e))?;
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(conn, queue))
            .map_err(|e| Error::unavailable("the SQLite writer (starting its thread)", e))?;
        Ok(Self { jobs })
    }

    /// Runs `stmts` atomically, after whatever writes were queued before them.
    pub async fn run(&self, stmts: Vec<Stmt>) -> Result<Vec<Outcome>> {
        let (reply, answer) = oneshot::channel();
        let gone = || Error::Unavailable {
            what: "the SQLite writer (stopped)".into(),
            source: None,
        };
        self.jobs.send(Job { stmts, reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn serve(conn: Connection, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
        if batch.len() == 1 && batch[0].stmts.len() == 1 {
            // Alone: autocommit makes the one statement atomic without BEGIN/COMMIT.
            let job = batch.remove(0);
            answer(job.reply, run_job(&conn, &job.stmts));
        } else {
            run_batch(&conn, batch);
        }
    }
}

fn answer(reply: oneshot::Sender<Result<Vec<Outcome>>>, result: Result<Vec<Outcome>>) {
    // The caller gave up (its request was cancelled); the write stands regardless.
    let _ = reply.send(result);
}

/// Runs the jobs in one transaction; each job's statements are atomic on their own
/// (a failed job leaves the others in), and answers go out after the commit.
fn run_batch(conn: &Connection, batch: Vec<Job>) {
    let mut ran: Vec<(Job, Result<Vec<Outcome>>)> = Vec::with_capacity(batch.len());
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = sqlite_error(e);
        for job in batch {
            answer(job.reply, Err(e.clone()));
        }
        return;
    }
    for job in batch {
        let result = run_job(conn, &job.stmts);
        if let Err(e) = &result {
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (e.g. I/O error): every job
                // run so far is undone, so each hears of it; the rest start afresh.
                for (earlier, _) in ran.drain(..) {
                    answer(earlier.reply, Err(e.clone()));
                }
                answer(job.reply, Err(e.clone()));
                if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                    tracing::error!(error = %e, "SQLite writer cannot begin a transaction");
                }
                continue;
            }
        }
        ran.push((job, result));
    }
    let committed = if conn.is_autocommit() {
        Ok(())
    } else {
        conn.execute_batch("COMMIT").map_err(|e| {
            let e = sqlite_error(e);
            if !conn.is_autocommit() {
                if let Err(e) = conn.execute_batch("ROLLBACK") {
                    tracing::error!(error = %e, "SQLite writer cannot roll back a failed commit");
                }
            }
            e
        })
    };
    for (job, result) in ran {
        answer(job.reply, committed.clone().and(result));
    }
}

/// One job: a single statement is atomic by itself; several share a savepoint.
fn run_job(conn: &Connection, stmts: &[Stmt]) -> Result<Vec<Outcome>> {
    if let [stmt] = stmts {
        return Ok(vec![run_stmt(conn, stmt).map_err(sqlite_error)?]);
    }
    conn.execute_batch("SAVEPOINT job").map_err(sqlite_error)?;
    let result: Result<Vec<Outcome>> = stmts
        .iter()
        .map(|s| run_stmt(conn, s).map_err(sqlite_error))
        .collect();
    let end = if result.is_ok() {
        "RELEASE job"
    } else {
        "ROLLBACK TO job; RELEASE job"
    };
    // After a rollback of the whole transaction there is no savepoint left to end.
    if !conn.is_autocommit() {
        conn.execute_batch(end).map_err(sqlite_error)?;
    }
    result
}

fn run_stmt(conn: &Connection, s: &Stmt) -> rusqlite::Result<Outcome> {
    let mut st = conn.prepare_cached(&s.sql)?;
    for i in 1..=st.parameter_count() {
        // `$n` is a named parameter to SQLite; bind it to the n-th argument.
        let name = st.parameter_name(i).unwrap_or_default();
        let arg = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .and_then(|n| s.args.get(n))
            .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_string()))?;
        match arg {
            Value::Int(v) => st.raw_bind_parameter(i, v)?,
            Value::Real(v) => st.raw_bind_parameter(i, v)?,
            Value::Text(v) => st.raw_bind_parameter(i, v.as_deref())?,
        }
    }
    let mut out = Outcome::default();
    let mut rows = st.raw_query();
    while let Some(row) = rows.next()? {
        out.affected += 1;
        if out.returned.is_none() {
            let n = row.as_ref().column_count();
            out.returned = Some(
                (0..n)
                    .map(|i| row.get_ref(i).map(value))
                    .collect::<rusqlite::Result<_>>()?,
            );
        }
    }
    drop(rows);
    if !s.returning {
        out.affected = conn.changes();
    }
    Ok(out)
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Int(None),
        ValueRef::Integer(i) => Value::Int(Some(i)),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            Value::Text(Some(String::from_utf8_lossy(t).into_owned()))
        }
    }
}

/// Maps a SQLite error as [`super::db_error`] maps a sqlx one.
fn sqlite_error(e: rusqlite::Error) -> Error {
    let code = e.sqlite_error().map(|f| f.extended_code);
    match code {
        Some(
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
        ) => Error::Conflict(format!("a concurrent write won: {e}")),
        Some(c) if classify_code(&c.to_string()) == Some(DbFailure::Unavailable) => {
            Error::unavailable("the registry database (busy)", e)
        }
        _ => Error::internal("a registry database write", e),
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (k TEXT PRIMARY KEY, v BIGINT NOT NULL);",
        )
        .expect("schema");
        (dir, path)
    }

    fn insert(k: &str, v: i64) -> Stmt {
        Stmt::returning("INSERT INTO t (k, v) VALUES ($1, $2) RETURNING v, k")
            .bind(k)
            .bind(v)
    }

    /// Another connection holds the write lock while jobs queue, so that they run as one
    /// batch once it lets go: failures inside the batch must stay the failing job's own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_keeps_each_jobs_outcome_its_own() {
        let (_dir, path) = setup();
        let writer = Arc::new(SqliteWriter::open(&path).expect("writer"));
        let blocker = Connection::open(&path).expect("blocker");
        blocker.execute_batch("BEGIN IMMEDIATE").expect("lock");

        let mut tasks = Vec::new();
        for i in 0..200_i64 {
            let w = writer.clone();
            // Keys repeat: of each key's four inserts exactly one may win.
            let key = format!("k{}", i % 50);
            tasks.push(tokio::spawn(
                async move { w.run(vec![insert(&key, i)]).await },
            ));
        }
        // A two-statement job whose second statement fails leaves nothing behind.
        let w = writer.clone();
        let atomic =
            tokio::spawn(async move { w.run(vec![insert("lone", 1), insert("lone", 2)]).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        blocker.execute_batch("COMMIT").expect("unlock");

        let (mut won, mut lost) = (0, 0);
        for t in tasks {
            match t.await.expect("task") {
                Ok(out) => {
                    assert_eq!(out.len(), 1);
                    assert_eq!(out[0].affected, 1);
                    assert!(out[0].text(1).expect("k").starts_with('k'));
                    won += 1;
                }
                Err(Error::Conflict(_)) => lost += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!((won, lost), (50, 150));
        assert!(matches!(
            atomic.await.expect("task"),
            Err(Error::Conflict(_))
        ));

        let check = Connection::open(&path).expect("check");
        let rows: i64 = check
            .query_row("SELECT COUNT(*) FROM t WHERE k LIKE 'k%'", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 50);
        let lone: i64 = check
            .query_row("SELECT COUNT(*) FROM t WHERE k = 'lone'", [], |r| r.get(0))
            .expect("count");
        assert_eq!(lone, 0, "a failed job's first statement was kept");
    }

    #[tokio::test]
    async fn a_reply_means_committed_and_counts_are_exact() {
        let (_dir, path) = setup();
        let writer = SqliteWriter::open(&path).expect("writer");
        for i in 0..5 {
            writer
                .run(vec![insert(&format!("k{i}"), i)])
                .await
                .expect("insert");
        }
        let out = writer
            .run(vec![
                Stmt::new("UPDATE t SET v = v + 1 WHERE v >= $1").bind(2_i64)
            ])
            .await
            .expect("update");
        assert_eq!(out[0].affected, 3);
        assert!(out[0].returned.is_none());
        // Seen at once from another connection: the answer came after the commit.
        let sum: i64 = Connection::open(&path)
            .expect("open")
            .query_row("SELECT SUM(v) FROM t", [], |r| r.get(0))
            .expect("sum");
        assert_eq!(sum, 10 + 3);
        let bad = writer
            .run(vec![
                Stmt::new("UPDATE t SET v = $2 WHERE k = $1").bind("k0")
            ])
            .await;
        assert!(matches!(bad, Err(Error::Internal { .. })), "{bad:?}");
    }
}
