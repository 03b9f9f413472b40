//! What both Capstan services share at run time.
//!
//! - [`error`]: the one error model: each crate's error enum names its [`error::ErrorKind`],
//!   and [`error::to_status`] turns it into a `tonic::Status` the same way everywhere.
//! - [`db`]: SQLite/Postgres pools set up alike on every connection, connection reuse,
//!   migrations, and the classification of database failures.
//! - [`fanout`]: one change listener per replica fanned out to its watchers, and reads
//!   shared by the watchers one change wakes.
//! - [`paging`]: page sizes and page tokens bound to their query.
//! - [`time`]: the one stored time unit.
//! - [`config`]: the common flags, each with its environment twin; URL redaction for logs.
//! - [`auth`]: bearer-JWT verification as a tower layer, roles, token minting.
//! - [`singleton`]: work one replica does at a time (its lease row) and the loop that
//!   repeats it.
//! - [`serve`]: server bootstrap — health, reflection v1 + v1alpha, request ids, tracing
//!   and metrics, message limits, TLS, and graceful shutdown under a deadline.
//! - [`telemetry`]: `tracing` subscriber and the Prometheus exporter.
//! - [`violations`]: field violations of bad requests and their `google.rpc` details.
//! - `testing` (feature `testing`): the test-database fixture of every crate's tests.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod fanout;
pub mod paging;
pub mod serve;
pub mod singleton;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod violations;
