//! Adapters to other services, implementing the domain's ports: registry-svc over gRPC
//! ([`registry`]) and an external embedding provider over HTTP ([`embeddings`]).

pub mod embeddings;
pub mod registry;
