//! The pipeline's schema migrations (`migrations/sqlite`, `migrations/postgres`), applied
//! at start-up.
//!
//! sqlx refuses to start on a database whose applied migration's text has changed since
//! (it keeps a checksum of every byte). A released migration is therefore never edited;
//! [`REWORDED`] lists the exceptions, migrations whose comments alone were reworded: a
//! database that applied the old text takes the new text's checksum, and one that applied
//! anything else is still refused.

use sqlx::{migrate::Migrator, AnyPool};

use super::{db_error, Backend};
use crate::error::{Error, Result};

/// (version, SHA-384 of the text databases applied before it was reworded). Version 2's
/// header comment cited a document outside the repository.
const REWORDED: &[(i64, &str)] = &[(
    2,
    "77c0e85d6832a621f08eefbfbe5facc2949c131ae67cf7b11bf9c25343769394c2083fce58d8a5d5a33320dfdb1fb3b0",
)];

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// Applies the backend's migrations (see `capstan_server::db::migrate` for concurrent
/// starts), after carrying the checksums of reworded ones forward.
pub(super) async fn migrate(pool: &AnyPool, backend: Backend) -> Result<()> {
    let migrator = match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    };
    if applied_any(pool, backend).await? {
        for (version, old) in REWORDED {
            let Some(now) = migrator.iter().find(|m| m.version == *version) else {
                continue;
            };
            let old = hex::decode(old).map_err(|e| Error::internal_from("REWORDED", e))?;
            sqlx::query(
                "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3",
            )
            .bind(now.checksum.to_vec())
            .bind(version)
            .bind(old)
            .execute(pool)
            .await
            .map_err(db_error)?;
        }
    }
    capstan_server::db::migrate(pool, backend, &SQLITE, &POSTGRES)
        .await
        .map_err(|e| Error::unavailable(format!("database migration failed: {e}")))
}

/// Whether the database has sqlx's migration table (in the pipeline's schema on Postgres).
async fn applied_any(pool: &AnyPool, backend: Backend) -> Result<bool> {
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() \
             AND tablename = '_sqlx_migrations'"
        }
    };
    let n: i64 = sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .map_err(db_error)?;
    Ok(n > 0)
}
