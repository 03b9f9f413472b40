//! Rules of the pipeline: operation and step state machines, the durable engine, event
//! watching, and the workflows. Knows nothing of gRPC or SQL: storage is reached through
//! the `store` trait and the registry through the [`workflows::registry::ModelRegistry`]
//! port.

pub mod demo;
pub mod engine;
pub mod operation;
pub mod paging;
pub mod provisioning;
pub mod watch;
pub mod workflow;
pub mod workflows;

/// Microseconds since the Unix epoch, as both services store them.
pub use capstan_server::time::{now_micros, Micros};
