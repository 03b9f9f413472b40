//! pipeline-svc's integration tests, in one binary: real SQLite files and real Postgres
//! databases (one per test), real gRPC on loopback, real processes for the crash drills.
//!
//! - `contract`: one suite per storage port, run on both backends;
//! - `engine`, `keys`, `watch`: the engine's behaviour, through the `noop` workflow;
//! - `db_loss`: every connection of the database killed under load;
//! - `migrations`: start-up on a database an earlier release migrated;
//! - `provisioning`: graph provisioning end to end, its failures, security and specs;
//! - `retention`: purged operations over gRPC, and replicas purging at once;
//! - `showcase` (feature `demo`): the demo with a real registry, its faults and drills.

mod common;
mod contract;
mod db_loss;
mod engine;
mod idle_watchers;
mod keys;
mod migrations;
mod provisioning;
mod retention;
#[cfg(feature = "demo")]
mod showcase;
mod watch;
