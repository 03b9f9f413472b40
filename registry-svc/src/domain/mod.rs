//! Rules of the registry: run state machine, alias compare-and-swap and promotion,
//! artifact upload checks, pagination. Knows nothing of gRPC or SQL; storage is reached
//! through the `store` traits.

pub mod alias;
pub mod artifacts;
pub mod cache;
pub mod registry;
pub mod run;
pub mod validate;
pub mod watch;

pub use capstan_server::time::{now_micros, Micros};
