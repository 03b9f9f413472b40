//! Rules of the registry: run state machine, alias compare-and-swap and promotion,
//! artifact upload checks, pagination. Knows nothing of gRPC or SQL; storage is reached
//! through the `store` traits.

pub mod alias;
pub mod artifacts;
pub mod cache;
pub mod paging;
pub mod registry;
pub mod run;
pub mod validate;
pub mod watch;

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the one time unit stored in every backend.
pub type Micros = i64;

pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
