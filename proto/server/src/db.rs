//! Database connections both services open the same way (sqlx `Any`: one SQL text with
//! `$n` placeholders serves SQLite and Postgres).

use std::time::Duration;

use sqlx::{any::AnyPoolOptions, AnyPool, Connection, Executor};

/// A pooled connection idle for longer is pinged before use (servers and proxies drop
/// idle connections; a dead one found this way is replaced instead of failing a request).
const IDLE_BEFORE_PING: Duration = Duration::from_secs(30);

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
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every connection on every acquire by default: a second round trip
        // per query. Only a connection idle long enough to have been dropped is checked.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > IDLE_BEFORE_PING {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _| {
            Box::pin(async move {
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
        .connect(url)
        .await
}

pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
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
