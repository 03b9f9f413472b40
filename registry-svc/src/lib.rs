//! Capstan registry-svc: model runs, their artifacts and aliases.
//!
//! `api` (gRPC mapping) → `domain` (rules, use cases) → `store` (SQL and blob storage).
//! `app` wires them into a server that binaries, tests and pipeline-svc's demo start.

pub mod api;
pub mod app;
pub mod domain;
pub mod error;
pub mod store;
