//! What the blob collector needs from SQL: leases of blobs being referenced, marks of blobs
//! being removed, and the collector's own lease (see migration 0023).

use capstan_server::db::Backend;
use uuid::Uuid;

use super::{stmt::Stmt, SqlStore};
use crate::{domain::Micros, error::Result};

/// Postgres: the blob's advisory lock, held to the end of the transaction, orders a lease
/// against a removal mark of the same blob (each reads what the other writes). SQLite has
/// one writer, which orders them already.
fn blob_lock(store: &SqlStore, sha256: &str) -> Option<Stmt> {
    (store.backend == Backend::Postgres).then(|| {
        Stmt::new("SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtext($1))) l").bind(sha256)
    })
}

pub(super) async fn lease(
    store: &SqlStore,
    lease: Uuid,
    sha256: &str,
    now: Micros,
    expire: Micros,
) -> Result<bool> {
    let insert = Stmt::new(
        "INSERT INTO blob_leases (lease_id, sha256, expire_time) SELECT $1, $2, $3 \
         WHERE NOT EXISTS (SELECT 1 FROM blob_removals WHERE sha256 = $2 AND expire_time > $4)",
    )
    .bind(lease.to_string())
    .bind(sha256)
    .bind(expire)
    .bind(now);
    let stmts = blob_lock(store, sha256)
        .into_iter()
        .chain([insert])
        .collect();
    let done = store.write.run(stmts).await?;
    Ok(done.last().is_some_and(|o| o.affected == 1))
}

pub(super) async fn release(store: &SqlStore, lease: Uuid) -> Result<()> {
    store
        .write
        .one(Stmt::new("DELETE FROM blob_leases WHERE lease_id = $1").bind(lease.to_string()))
        .await?;
    Ok(())
}

pub(super) async fn begin_removal(
    store: &SqlStore,
    sha256: &str,
    now: Micros,
    expire: Micros,
) -> Result<bool> {
    // Expired leases go first: their holders are gone.
    let expired = Stmt::new("DELETE FROM blob_leases WHERE sha256 = $1 AND expire_time <= $2")
        .bind(sha256)
        .bind(now);
    let mark = Stmt::new(
        "INSERT INTO blob_removals (sha256, expire_time) SELECT $1, $2 \
         WHERE NOT EXISTS (SELECT 1 FROM run_artifacts WHERE sha256 = $1) \
         AND NOT EXISTS (SELECT 1 FROM blob_leases WHERE sha256 = $1) \
         ON CONFLICT (sha256) DO UPDATE SET expire_time = excluded.expire_time",
    )
    .bind(sha256)
    .bind(expire);
    let stmts = blob_lock(store, sha256)
        .into_iter()
        .chain([expired, mark])
        .collect();
    let done = store.write.run(stmts).await?;
    Ok(done.last().is_some_and(|o| o.affected == 1))
}

pub(super) async fn end_removal(store: &SqlStore, sha256: &str) -> Result<()> {
    store
        .write
        .one(Stmt::new("DELETE FROM blob_removals WHERE sha256 = $1").bind(sha256))
        .await?;
    Ok(())
}

pub(super) async fn claim_collector(
    store: &SqlStore,
    holder: &str,
    now: Micros,
    expire: Micros,
) -> Result<bool> {
    let done = store
        .write
        .one(
            Stmt::new(capstan_server::singleton::claim_statement("blob_collector"))
                .bind("blobs")
                .bind(holder)
                .bind(expire)
                .bind(now),
        )
        .await?;
    Ok(done.affected == 1)
}
