//! Capstan pipeline-svc: workflows as durable operations, streamed over gRPC.
//!
//! `api` (gRPC mapping) → `domain` (the engine and the workflows, with the ports they
//! need) ← `store`, `clients` (the ports on databases and other services). `app` wires
//! the adapters into a server that the binary, the tests and the `demo` command (`cli`,
//! feature `demo`: the only code that links registry-svc) start.

pub mod api;
pub mod app;
#[cfg(feature = "demo")]
pub mod cli;
pub mod clients;
pub mod domain;
pub mod error;
pub mod store;
