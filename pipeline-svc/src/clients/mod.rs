//! Adapters to other services, implementing the domain's ports: registry-svc over gRPC
//! ([`registry`], with the token of [`token_file`]) and an external embedding provider
//! over HTTP ([`embeddings`]).

pub mod embeddings;
pub mod registry;
pub mod token_file;
