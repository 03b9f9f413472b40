//! Capstan pipeline-svc: workflows as durable operations, streamed over gRPC.
//!
//! `api` (gRPC mapping) → `domain` (engine, state machines, workflows) → `store` (SQL).
//! `clients` adapts other services to the domain's ports. `app` wires them into a
//! server that the binary, the tests and the `demo` command (`cli`) start.

pub mod api;
pub mod app;
pub mod cli;
pub mod clients;
pub mod domain;
pub mod error;
pub mod store;
