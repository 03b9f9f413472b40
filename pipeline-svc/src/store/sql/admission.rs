//! Admission on the SQL store: concurrency keys and the per-owner limit of running
//! operations (the rules are on [`JobQueue`](crate::domain::engine::ports::JobQueue)).
//!
//! Whoever admits an operation first takes transaction-scoped advisory locks on its keys
//! (and its owner, under a limit) on Postgres, then re-checks and marks it admitted: two
//! replicas admitting operations of one key serialize there, so the check cannot race.
//! SQLite's single writer serializes them anyway. A unique index keeps one holder per key
//! whatever happens. Waiting costs nothing: nothing polls a waiter, and a claim does not
//! look at a queued job marked `blocked` (behind a key); the end of the operation ahead
//! frees its keys, tells each waiter behind it who is ahead now (an event), unblocks the
//! ones nothing holds back any more, and wakes the workers.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{db_error, rows::uuid_col, Backend, SqlStore, JOBS_CHANNEL};
use crate::{
    domain::{
        engine::{
            operation::{Event, EventType},
            ports::{Admission, Change},
        },
        Micros,
    },
    error::Result,
};

/// Rows of other operations' keys that keep `mine` from running: a holder of one of its
/// keys, or (while it holds none) an unfinished operation that declared one earlier.
const AHEAD: &str = "FROM operation_keys mine JOIN operation_keys other \
     ON other.concurrency_key = mine.concurrency_key AND other.operation_id <> mine.operation_id \
     WHERE (other.held = 1 OR (mine.held = 0 AND (other.position < mine.position \
       OR (other.position = mine.position AND other.operation_id < mine.operation_id))))";

/// SQL: whether the job `j` (of operation `o`) may be admitted at time `now` (a
/// placeholder), as the claim's filter. The claim re-checks under locks.
pub(super) fn admissible(now: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 {AHEAD} AND mine.operation_id = j.operation_id) \
         AND (j.owner_limit = 0 OR ({}) < j.owner_limit)",
        running_of_owner("o.owner", "j.operation_id", now)
    )
}

/// SQL: the admitted, live operations of `owner` other than `except`.
fn running_of_owner(owner: &str, except: &str, now: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM jobs r JOIN operations ro ON ro.operation_id = r.operation_id \
         WHERE ro.owner = {owner} AND r.admitted = 1 AND r.state = 'leased' \
           AND r.lease_expires >= {now} AND r.operation_id <> {except}"
    )
}

/// Marks operation `id`'s queued job as waiting behind a key (or no longer), the claim's
/// hint; a leased job is left alone (its holder waits for admission itself).
async fn set_blocked(conn: &mut AnyConnection, id: Uuid, blocked: bool) -> Result<()> {
    sqlx::query("UPDATE jobs SET blocked = $2 WHERE operation_id = $1 AND state = 'queued'")
        .bind(id.to_string())
        .bind(i64::from(blocked))
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

fn waiting_for_key(key: &str, other: Uuid, held: bool) -> String {
    if held {
        format!("waiting for concurrency key {key}, held by operation {other}")
    } else {
        format!("waiting for concurrency key {key}: operation {other} is ahead of it")
    }
}

impl SqlStore {
    /// Inserts the keys of a new operation (inside its creation's transaction).
    pub(super) async fn insert_keys(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        keys: &[String],
        position: Micros,
    ) -> Result<()> {
        for key in keys {
            sqlx::query(
                "INSERT INTO operation_keys (concurrency_key, operation_id, position, held) \
                 VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING",
            )
            .bind(key)
            .bind(id.to_string())
            .bind(position)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        }
        Ok(())
    }

    /// Admits operation `id` if nothing keeps it waiting (see the module comment);
    /// inside the caller's transaction, which holds the lease when there is one.
    pub(super) async fn admit_in(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        now: Micros,
    ) -> Result<Admission> {
        let sid = id.to_string();
        let row = sqlx::query(
            "SELECT o.owner, o.cancel_requested, j.owner_limit, j.admitted FROM operations o \
             JOIN jobs j ON j.operation_id = o.operation_id WHERE o.operation_id = $1",
        )
        .bind(&sid)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
        let owner: String = row.try_get("owner").map_err(db_error)?;
        let cancel: i64 = row.try_get("cancel_requested").map_err(db_error)?;
        let limit: i64 = row.try_get("owner_limit").map_err(db_error)?;
        let admitted: i64 = row.try_get("admitted").map_err(db_error)?;
        if cancel != 0 {
            return Ok(Admission::CancelRequested);
        }
        if admitted != 0 {
            return Ok(Admission::Admitted);
        }
        let mut locks = self.key_locks(conn, id).await?;
        if limit > 0 {
            locks.push(format!("owner:{owner}"));
        }
        self.lock_names(conn, locks).await?;
        if let Some(why) = self.key_blocker(conn, id).await? {
            return Ok(Admission::Waiting(why));
        }
        if limit > 0 {
            let running: i64 = sqlx::query(&running_of_owner("$1", "$2", "$3"))
                .bind(&owner)
                .bind(&sid)
                .bind(now)
                .fetch_one(&mut *conn)
                .await
                .map_err(db_error)?
                .try_get(0)
                .map_err(db_error)?;
            if running >= limit {
                return Ok(Admission::Waiting(format!(
                    "waiting: {owner} already runs {running} operations (the limit is {limit})"
                )));
            }
        }
        sqlx::query("UPDATE operation_keys SET held = 1 WHERE operation_id = $1")
            .bind(&sid)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        sqlx::query("UPDATE jobs SET admitted = 1 WHERE operation_id = $1")
            .bind(&sid)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(Admission::Admitted)
    }

    /// The advisory lock names of operation `id`'s keys.
    async fn key_locks(&self, conn: &mut AnyConnection, id: Uuid) -> Result<Vec<String>> {
        sqlx::query("SELECT concurrency_key FROM operation_keys WHERE operation_id = $1")
            .bind(id.to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?
            .iter()
            .map(|r| {
                r.try_get::<String, _>("concurrency_key")
                    .map(|k| format!("key:{k}"))
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(db_error)
    }

    /// Why operation `id` waits for a key (naming the operation ahead), if it does.
    async fn key_blocker(&self, conn: &mut AnyConnection, id: Uuid) -> Result<Option<String>> {
        let row = sqlx::query(&format!(
            "SELECT mine.concurrency_key, other.operation_id, other.held {AHEAD} \
             AND mine.operation_id = $1 \
             ORDER BY other.held DESC, other.position, other.operation_id LIMIT 1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
        row.map(|r| {
            let key: String = r.try_get("concurrency_key").map_err(db_error)?;
            let held: i64 = r.try_get("held").map_err(db_error)?;
            Ok(waiting_for_key(
                &key,
                uuid_col(&r, "operation_id")?,
                held != 0,
            ))
        })
        .transpose()
    }

    /// Transaction-scoped advisory locks on `names`, in one order so that two admitters
    /// never deadlock (Postgres; SQLite's single writer needs none).
    async fn lock_names(&self, conn: &mut AnyConnection, mut names: Vec<String>) -> Result<()> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        names.sort();
        names.dedup();
        for name in names {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(name)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// The PROGRESS event saying why a just-created operation waits, if it does; a
    /// DIRECT (`lease`d) one that need not wait is admitted.
    pub(super) async fn admit_new(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        leased: bool,
        time: Micros,
    ) -> Result<Option<Event>> {
        let why = if leased {
            match self.admit_in(conn, id, time).await? {
                Admission::Waiting(why) => Some(why),
                Admission::Admitted | Admission::CancelRequested => None,
            }
        } else {
            // Under the keys' locks, so that the end of the operation ahead either comes
            // before this check or sees this waiter and unblocks it (`release_keys`).
            let locks = self.key_locks(conn, id).await?;
            self.lock_names(conn, locks).await?;
            let why = self.key_blocker(conn, id).await?;
            set_blocked(conn, id, why.is_some()).await?;
            why
        };
        let Some(why) = why else {
            return Ok(None);
        };
        let change = Change::new(EventType::Progress, why, time);
        Ok(Some(self.append(conn, id, &change).await?.0))
    }

    /// Frees the keys of an operation that ended, tells every operation waiting for one
    /// of them what it waits for now, and wakes the workers of every replica. Returns the
    /// events it recorded.
    pub(super) async fn release_keys(
        &self,
        conn: &mut AnyConnection,
        id: Uuid,
        time: Micros,
    ) -> Result<Vec<Event>> {
        let sid = id.to_string();
        let freed = sqlx::query(
            "DELETE FROM operation_keys WHERE operation_id = $1 RETURNING concurrency_key",
        )
        .bind(&sid)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
        if freed.is_empty() {
            return Ok(Vec::new());
        }
        // The freed keys, bound one by one (an operation declares a handful).
        let list = (0..freed.len())
            .map(|i| format!("${}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT DISTINCT operation_id FROM operation_keys WHERE held = 0 \
             AND concurrency_key IN ({list}) ORDER BY operation_id"
        );
        let mut q = sqlx::query(&sql);
        let mut locks = Vec::with_capacity(freed.len());
        for r in &freed {
            let key: String = r.try_get("concurrency_key").map_err(db_error)?;
            q = q.bind(key.clone());
            locks.push(format!("key:{key}"));
        }
        // Waiters created before this point are seen below; later ones see the keys freed.
        self.lock_names(conn, locks).await?;
        let waiting = q.fetch_all(&mut *conn).await.map_err(db_error)?;
        let mut events = Vec::new();
        for row in &waiting {
            let w = uuid_col(row, "operation_id")?;
            let why = match self.key_blocker(conn, w).await? {
                Some(why) => why,
                None => {
                    set_blocked(conn, w, false).await?;
                    format!("operation {id} ended; its concurrency keys are free for this one")
                }
            };
            let change = Change::new(EventType::Progress, why, time);
            events.push(self.append(conn, w, &change).await?.0);
        }
        self.notify(conn, JOBS_CHANNEL, &sid).await?;
        Ok(events)
    }
}
