//! The rules of the pipeline, free of gRPC and SQL. `engine` runs any workflow as a
//! durable operation; `showcase`, `provisioning` and `noop` are workflows, each in its
//! own folder with the ports (traits) it reaches the outside through. `store/` and
//! `clients/` implement those ports; nothing here imports them.

#[macro_use]
mod string_enum;

pub mod engine;
pub mod noop;
pub mod paging;
pub mod provisioning;
pub mod showcase;

/// Microseconds since the Unix epoch, as both services store them.
pub use capstan_server::time::{now_micros, Micros};
