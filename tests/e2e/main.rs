//! The end-to-end suite: the built binaries driven the way users, operators and
//! Kubernetes drive them, and checks over the source tree. One test binary, so the
//! workspace's dependencies are linked once for all of it.

mod bench_report;
mod chaos;
mod client_example;
mod layers;
mod manifest_env;
mod monitoring;
mod python_client;
mod readme;
mod registry;
mod topology;
mod traces;
