//! Capstan registry-svc: model runs, their artifacts and aliases.
//!
//! Layers, each depending only on the ones after it:
//! - `api`: the gRPC service — authorization, mapping messages to domain requests, and
//!   the one mapping of [`error::Error`] to a status. Talks to the domain only.
//! - `domain`: the rules and use cases, and the ports ([`domain::ports`]) they need from
//!   storage.
//! - `store`: the adapters behind those ports (SQL on SQLite or Postgres; blobs on a
//!   filesystem or S3).
//!
//! `app` wires concrete adapters into a server that binaries, tests and pipeline-svc's
//! demo start; `error` is the one error enum every layer reports in.

pub mod api;
pub mod app;
pub mod domain;
pub mod error;
pub mod store;
