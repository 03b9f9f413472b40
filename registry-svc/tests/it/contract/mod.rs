//! One contract per store trait, written once and run on every implementation: the
//! [`RegistryStore`](registry_svc::domain::ports::RegistryStore) on SQLite and Postgres,
//! the [`BlobStore`](registry_svc::domain::ports::BlobStore) on the filesystem and S3.

mod blob_store;
mod registry_store;
