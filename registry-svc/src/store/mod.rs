//! The adapters behind the domain's ports ([`crate::domain::ports`]):
//!
//! - [`sql`]: [`RegistryStore`](crate::domain::ports::RegistryStore) on SQLite and Postgres
//!   with one SQL implementation; SQLite's writes go through one writer thread.
//! - [`blobs`]: [`BlobStore`](crate::domain::ports::BlobStore) on a local filesystem (direct
//!   I/O) and on S3-compatible object storage.

pub mod blobs;
pub mod sql;
