//! registry-svc's integration tests, in one binary: real servers on port 0 over real
//! gRPC, real SQLite files and Postgres databases, a real S3 server.

mod aliases;
mod artifacts;
mod bad_input;
mod balancing;
mod coalescing;
mod collector;
mod contract;
mod deletion;
mod filters;
mod idle_watchers;
mod moto;
mod namespaces;
mod oidc;
mod outage;
mod runs;
mod startup;
mod support;
