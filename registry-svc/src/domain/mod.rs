//! The registry's rules and use cases. Knows nothing of gRPC or SQL: storage is reached
//! through the ports of [`ports`], which `store/` implements.
//!
//! - [`registry`]: the [`registry::Registry`] facade every use case hangs off, and what it holds.
//! - [`runs`]: model runs (one training or evaluation of a model): their state machine,
//!   listing with filters, order and page tokens, and the heartbeat reaper.
//! - [`aliases`]: named pointers to runs, changed by compare-and-swap with a gapless
//!   history: set, delete, roll back, guarded promotion, the read cache and `WatchAliases`.
//! - [`namespaces`]: where runs and aliases live; listing them.
//! - [`artifacts`]: upload (hashed while streaming, content-addressed) and download.
//! - [`validate`]: field rules shared by every request that carries the field.

pub mod aliases;
pub mod artifacts;
pub mod namespaces;
pub mod ports;
pub mod registry;
pub mod runs;
pub mod validate;

pub use capstan_server::time::{micros_ago, now_micros, Micros};

/// Retries of an optimistic write that lost a race before giving up with a conflict.
const WRITE_RETRIES: usize = 16;
