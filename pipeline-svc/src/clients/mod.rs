//! Adapters to other services, implementing the domain's ports over gRPC.

pub mod registry;
