//! What both Capstan services share at run time.
//!
//! - [`db`]: SQLite/Postgres pools set up alike on every connection.
//! - [`config`]: the common flags of SPEC §6, each with its environment twin.
//! - [`auth`]: bearer-JWT verification as a tower layer, roles, token minting.
//! - [`serve`]: server bootstrap — health, reflection v1 + v1alpha, request tracing and
//!   metrics, message limits, TLS, and graceful shutdown under a deadline.
//! - [`client`]: typed-client channels that carry a bearer token.
//! - [`telemetry`]: `tracing` subscriber and the Prometheus exporter.
//! - [`violations`]: field violations of bad requests and their `google.rpc` details.

pub mod auth;
pub mod client;
pub mod config;
pub mod db;
pub mod serve;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod violations;
