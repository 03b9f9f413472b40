//! Work that one replica does at a time, pass after pass (the registry's blob collector,
//! the pipeline's operation purger): the lease row that says which replica, and the loop
//! that repeats a pass.
//!
//! The lease is a row (`name`, `holder`, `expire_time`) in the service's own database.
//! A replica takes it when it is free or expired and renews it while it works; a crashed
//! holder's lease expires, and another replica takes over. The lease only spares the
//! others the work: what a pass changes must stay correct if two ever overlap.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::error::Chain;

/// The statement that takes or renews lease `$1` of `table` for holder `$2` until `$3`
/// (micros), when nobody holds it, `$2` does, or its holder's ran out before `$4` (now).
/// It changes one row exactly when the lease is `$2`'s afterwards. `table` is a constant
/// of the caller (never input).
pub fn claim_statement(table: &str) -> String {
    format!(
        "INSERT INTO {table} (name, holder, expire_time) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
         expire_time = excluded.expire_time \
         WHERE {table}.holder = excluded.holder OR {table}.expire_time <= $4"
    )
}

/// Runs `pass` every `interval` until `shutdown`; a failed pass is logged as `what`
/// with its error, and the next one tries again.
pub fn every<F, Fut, E>(
    interval: Duration,
    shutdown: CancellationToken,
    what: &'static str,
    mut pass: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::error::Error,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = pass().await {
                tracing::error!(error = %Chain(&e), "{what} failed");
            }
        }
    });
}
