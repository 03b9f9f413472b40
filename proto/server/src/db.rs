//! Database connections both services open the same way (sqlx `Any`: one SQL text with
//! `$n` placeholders serves SQLite and Postgres).

use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use futures::{future::BoxFuture, stream::BoxStream, StreamExt, TryStreamExt};
use sqlx::{
    any::{AnyPoolOptions, AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo},
    pool::PoolConnection,
    Any, AnyConnection, AnyPool, Connection, Describe, Either, Execute, Executor,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A pooled connection idle for longer is pinged before use (servers and proxies drop
/// idle connections; a dead one found this way is replaced instead of failing a request).
const IDLE_BEFORE_PING: Duration = Duration::from_secs(30);

/// How long a query waits for a free connection before failing as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    /// The row-lock clause for read-modify-write transactions (SQLite has a single writer).
    pub fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE",
        }
    }
}

/// Opens a pool whose every connection is set up alike: WAL, a busy timeout and foreign
/// keys on SQLite; the service's own schema on Postgres when `search_path` is given.
pub async fn pool(
    url: &str,
    backend: Backend,
    max: u32,
    search_path: Option<&'static str>,
) -> Result<AnyPool, sqlx::Error> {
    pool_options(backend, max, search_path).connect(url).await
}

/// The options of [`pool`], to change before connecting (sqlx's default max lifetime of
/// 30 minutes and idle timeout of 10 minutes stay unless changed; [`Connections`] honours
/// both).
pub fn pool_options(
    backend: Backend,
    max: u32,
    search_path: Option<&'static str>,
) -> AnyPoolOptions {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // sqlx pings every connection on every acquire by default: a second round trip
        // per query. Only a connection idle long enough to have been dropped is checked.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                note_age(meta.age);
                if meta.idle_for > IDLE_BEFORE_PING {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                note_age(Duration::ZERO);
                match backend {
                    Backend::Sqlite => {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA busy_timeout = 10000",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            conn.execute(pragma).await?;
                        }
                    }
                    Backend::Postgres => {
                        if let Some(schema) = search_path {
                            conn.execute(format!("SET search_path TO {schema}").as_str())
                                .await?;
                        }
                    }
                }
                Ok(())
            })
        })
}

tokio::task_local! {
    /// Set by [`Connections::acquire`] around sqlx's acquire, whose hooks (run within it)
    /// note how old the connection they hand out is: sqlx keeps that to itself.
    static HANDED_OUT_AGE: Cell<Option<Duration>>;
}

fn note_age(age: Duration) {
    // Outside `Connections::acquire` (migrations, sqlx's own checks) nobody asks.
    let _outside = HANDED_OUT_AGE.try_with(|cell| cell.set(Some(age)));
}

/// A pool whose connections come back for the next query as they are after a use that
/// completed.
///
/// sqlx checks every connection given back to its pool with a ping, in a task of its own:
/// a second round trip per query, during which the connection is busy and the next query
/// waits for it (at one request in flight that doubled `GetAlias`'s time on Postgres). A
/// use that completed has read every reply, so its connection needs no check and is kept
/// here; one whose use failed or was cancelled (its replies perhaps unread, a transaction
/// perhaps open) is dropped into sqlx's pool, whose check decides whether it lives on.
///
/// Kept connections are held to the pool's max lifetime and idle timeout as the pool
/// holds its own: one past either is closed instead of used (on the next acquire, or by a
/// sweep every half of the shorter limit while nothing is acquired).
///
/// As an [`Executor`], `&Connections` runs each query on a connection of its own; for
/// several statements on one connection (a transaction), [`Connections::acquire`] one.
#[derive(Clone)]
pub struct Connections {
    pool: AnyPool,
    /// One permit per connection the pool may open. Waiters queue here, fairly: the pool
    /// never sees the connections kept in `idle` come back, so it cannot hand them on.
    permits: Arc<Semaphore>,
    idle: Arc<Mutex<Vec<Idle>>>,
    limits: Limits,
    sweeping: Arc<AtomicBool>,
}

struct Idle {
    conn: PoolConnection<Any>,
    /// When it was opened (as far as sqlx told), and when it was last given back.
    opened: Instant,
    since: Instant,
}

/// The pool's limits on a connection's age and idle time.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl Limits {
    fn expired(&self, opened: Instant, since: Instant) -> bool {
        self.max_lifetime.is_some_and(|l| opened.elapsed() >= l)
            || self.idle_timeout.is_some_and(|t| since.elapsed() >= t)
    }

    /// How often kept connections are swept while nobody acquires: half the shorter
    /// limit (sqlx sweeps its own once per the shorter one), at least every second.
    fn sweep_every(&self) -> Option<Duration> {
        let shorter = match (self.max_lifetime, self.idle_timeout) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some((shorter / 2).max(Duration::from_secs(1)))
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("pool", &self.pool)
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl From<AnyPool> for Connections {
    fn from(pool: AnyPool) -> Self {
        let options = pool.options();
        let max = options.get_max_connections() as usize;
        let limits = Limits {
            max_lifetime: options.get_max_lifetime(),
            idle_timeout: options.get_idle_timeout(),
        };
        Self {
            pool,
            permits: Arc::new(Semaphore::new(max)),
            idle: Arc::default(),
            limits,
            sweeping: Arc::default(),
        }
    }
}

impl Connections {
    /// The pool underneath, for what takes a pool (migrations).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A connection for this task alone: the one used last, else a new one from the pool.
    pub async fn acquire(&self) -> Result<Lease, sqlx::Error> {
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let kept = {
            let mut idle = self.lock_idle();
            close_expired(&mut idle, self.limits);
            idle.pop()
        };
        let (conn, opened) = match kept {
            Some(Idle {
                mut conn,
                opened,
                since,
            }) if since.elapsed() > IDLE_BEFORE_PING => {
                // Long idle: the server or a proxy may have dropped it.
                match conn.ping().await {
                    Ok(()) => (conn, opened),
                    Err(e) => {
                        tracing::warn!(error = %e, "an idle database connection is gone; opening another");
                        drop(conn);
                        self.pooled().await?
                    }
                }
            }
            Some(Idle { conn, opened, .. }) => (conn, opened),
            None => self.pooled().await?,
        };
        Ok(Lease {
            conn,
            opened,
            home: self.clone(),
            _permit: permit,
        })
    }

    /// A connection from sqlx's pool, and when it was opened.
    async fn pooled(&self) -> Result<(PoolConnection<Any>, Instant), sqlx::Error> {
        HANDED_OUT_AGE
            .scope(Cell::new(None), async {
                let conn = self.pool.acquire().await?;
                // A pool made without `pool_options`' hooks tells no age: count from now.
                let age = HANDED_OUT_AGE.with(Cell::get).unwrap_or_default();
                let now = Instant::now();
                Ok((conn, now.checked_sub(age).unwrap_or(now)))
            })
            .await
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        lock(&self.idle)
    }

    /// Keeps `conn` for the next use, and makes sure a sweep closes it in time if there
    /// is none.
    fn keep(&self, conn: PoolConnection<Any>, opened: Instant) {
        lock(&self.idle).push(Idle {
            conn,
            opened,
            since: Instant::now(),
        });
        if let Some(every) = self.limits.sweep_every() {
            if !self.sweeping.swap(true, Ordering::AcqRel) {
                tokio::spawn(sweep(Arc::downgrade(&self.idle), self.limits, every));
            }
        }
    }
}

/// Closes the kept connections past the pool's limits, until the [`Connections`] are gone.
async fn sweep(idle: Weak<Mutex<Vec<Idle>>>, limits: Limits, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(idle) = idle.upgrade() else { return };
        close_expired(&mut lock(&idle), limits);
    }
}

/// Removes the connections past the limits from `idle` and closes them (in a task of
/// their own: closing waits on the server, the caller holds a lock).
fn close_expired(idle: &mut Vec<Idle>, limits: Limits) {
    if !idle.iter().any(|c| limits.expired(c.opened, c.since)) {
        return;
    }
    // In order: the most recently used stays last, to be used first.
    let (expired, kept): (Vec<Idle>, Vec<Idle>) = std::mem::take(idle)
        .into_iter()
        .partition(|c| limits.expired(c.opened, c.since));
    *idle = kept;
    tokio::spawn(async move {
        for Idle { conn, .. } in expired {
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing a database connection past the pool's lifetime or idle limit failed");
            }
        }
    });
}

fn lock(idle: &Mutex<Vec<Idle>>) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    // The vector is consistent after any push or pop, so a panic elsewhere leaves it usable.
    idle.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection of [`Connections`] held by one task. [`Lease::release`] after a use that
/// completed keeps it for the next; dropped otherwise, it goes back through sqlx's check.
pub struct Lease {
    conn: PoolConnection<Any>,
    opened: Instant,
    home: Connections,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    pub fn release(self) {
        self.home.keep(self.conn, self.opened);
    }
}

impl std::ops::Deref for Lease {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

impl<'c> Executor<'c> for &'c Connections {
    type Database = Any;

    /// Collected before it is streamed, so that the connection is free again as soon as
    /// the database has answered (every query of the services is bounded by a page size).
    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        futures::stream::once(async move {
            let mut lease = self.acquire().await?;
            let all: Vec<_> = lease.fetch_many(query).try_collect().await?;
            lease.release();
            Ok::<_, sqlx::Error>(futures::stream::iter(all.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        Box::pin(async move {
            let mut lease = self.acquire().await?;
            let row = lease.fetch_optional(query).await?;
            lease.release();
            Ok(row)
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let mut lease = self.acquire().await?;
            let statement = lease.prepare_with(sql, parameters).await?;
            lease.release();
            Ok(statement)
        })
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let mut lease = self.acquire().await?;
            let described = lease.describe(sql).await?;
            lease.release();
            Ok(described)
        })
    }
}

/// What a failed database call means for whoever made it, whichever the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// The database cannot be reached right now: a lost or refused connection, a pool
    /// that timed out or closed, a server restarting or out of connections. The same call
    /// may succeed later as it is.
    Unavailable,
    /// The transaction lost to a concurrent one (serialization failure, deadlock): the
    /// whole read-modify-write may be tried again.
    Conflict,
    /// A unique constraint refused the write: for a compare-and-swap insert, another
    /// writer got there first.
    UniqueViolation,
    /// Anything else: a bug, a schema mismatch, corrupt data.
    Other,
}

impl DbFailure {
    /// How a service reports it: a unique violation is a lost race (`Aborted`) like a
    /// conflict, since every unique key the services write is claimed by compare-and-swap.
    pub fn kind(self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            Self::Unavailable => ErrorKind::Unavailable,
            Self::Conflict | Self::UniqueViolation => ErrorKind::Aborted,
            Self::Other => ErrorKind::Internal,
        }
    }
}

/// Classifies a sqlx error; see [`DbFailure`].
pub fn classify(e: &sqlx::Error) -> DbFailure {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbFailure::Unavailable,
        // A connection cut mid-reply reads as a broken protocol exchange.
        sqlx::Error::Protocol(_) => DbFailure::Unavailable,
        sqlx::Error::Database(d) if d.is_unique_violation() => DbFailure::UniqueViolation,
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|code| classify_code(&code))
            .unwrap_or(DbFailure::Other),
        _ => DbFailure::Other,
    }
}

/// The failure a database error code stands for, when it is not [`DbFailure::Other`]:
/// a Postgres SQLSTATE (always five characters), or a SQLite result code (sqlx reports it
/// as a number of at most four digits).
pub fn classify_code(code: &str) -> Option<DbFailure> {
    if code.len() == 5 {
        return match code {
            // Connection exceptions (class 08) and insufficient resources (class 53: too
            // many connections, out of memory or disk).
            c if c.starts_with("08") || c.starts_with("53") => Some(DbFailure::Unavailable),
            // The operator or server intervening: query cancelled, admin shutdown, crash
            // shutdown, cannot connect now (starting up), idle session timeout.
            "57014" | "57P01" | "57P02" | "57P03" | "57P05" => Some(DbFailure::Unavailable),
            // Serialization failure, deadlock detected.
            "40001" | "40P01" => Some(DbFailure::Conflict),
            _ => None,
        };
    }
    // SQLite: SQLITE_BUSY and SQLITE_LOCKED, with their extended codes (another process
    // held the lock past the busy timeout).
    match code.parse::<i32>().ok()? & 0xff {
        5 | 6 => Some(DbFailure::Unavailable),
        _ => None,
    }
}

pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    classify(e) == DbFailure::UniqueViolation
}

/// Applies `sqlite` or `postgres` migrations as the backend requires. Postgres runs them
/// under sqlx's advisory lock; SQLite has no such lock, so a process that loses the race to
/// another one starting on the same file (its migration fails on what the winner created,
/// and rolls back) tries again and finds the migrations applied.
pub async fn migrate(
    pool: &AnyPool,
    backend: Backend,
    sqlite: &sqlx::migrate::Migrator,
    postgres: &sqlx::migrate::Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    let mut attempt = 0;
    loop {
        let result = match backend {
            Backend::Sqlite => sqlite.run(pool).await,
            Backend::Postgres => postgres.run(pool).await,
        };
        match result {
            Err(e) if backend == Backend::Sqlite && attempt < 20 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "SQLite migration raced another process; retrying");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_of_both_backends_are_classified() {
        for unavailable in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "57014",
        ] {
            assert_eq!(
                classify_code(unavailable),
                Some(DbFailure::Unavailable),
                "{unavailable}"
            );
        }
        for conflict in ["40001", "40P01"] {
            assert_eq!(
                classify_code(conflict),
                Some(DbFailure::Conflict),
                "{conflict}"
            );
        }
        // Postgres codes whose digits would read as SQLite's BUSY: still not unavailable.
        for other in ["23505", "42P01", "22021", "XX000"] {
            assert_eq!(classify_code(other), None, "{other}");
        }
        // SQLite: BUSY, LOCKED and their extended codes; a constraint error is not.
        for busy in ["5", "6", "261", "517", "262", "773"] {
            assert_eq!(classify_code(busy), Some(DbFailure::Unavailable), "{busy}");
        }
        assert_eq!(classify_code("19"), None);
        assert_eq!(classify_code("2067"), None);
    }
}
