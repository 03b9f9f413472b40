//! Content-addressed artifact blobs: an upload is written to a staging object first (its
//! hash is known only at the end), then moved to its content address, so identical
//! content is stored once. A staged blob dropped uncommitted (the client went away, the
//! hash did not match) is removed.

mod fs;
mod s3;

use std::{path::Path, sync::Arc};

pub use fs::FsBlobStore;
pub use s3::ObjectBlobStore;

use crate::{
    domain::ports::BlobStore,
    error::{Error, Result},
};

/// A failed storage operation: the blob store cannot serve now.
fn io_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::unavailable(format!("artifact storage ({what})"), e)
}

fn key_path(sha256: &str) -> String {
    format!("blobs/sha256/{}/{sha256}", &sha256[..2])
}

/// The SHA-256 a blob's key names, if it is a blob's key.
fn sha_of_key(key: &str) -> Option<&str> {
    let name = key.rsplit('/').next()?;
    crate::domain::validate::sha256_hex_ok(name).then_some(name)
}

/// Opens the blob store named by `--artifact-store`: `fs` (under `data_dir/artifacts`) or
/// `s3://bucket[/prefix]`.
pub async fn open(spec: &str, data_dir: &Path) -> Result<Arc<dyn BlobStore>> {
    if spec == "fs" {
        Ok(Arc::new(
            FsBlobStore::open(&data_dir.join("artifacts")).await?,
        ))
    } else if spec.starts_with("s3://") {
        Ok(Arc::new(ObjectBlobStore::s3(spec)?))
    } else {
        Err(Error::invalid(
            "artifact_store",
            format!("{spec:?} is neither `fs` nor `s3://bucket[/prefix]`"),
        ))
    }
}
