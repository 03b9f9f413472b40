//! Content-addressed artifact blobs: `blobs/sha256/{first two hex}/{sha256}`.
//!
//! An upload is written to a staging object first (its hash is known only at the end),
//! then moved to its content address; identical content is stored once. A staged blob
//! that is dropped uncommitted (client went away, hash mismatch) is removed.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use object_store::{path::Path as ObjectPath, ObjectStore, WriteMultipart};

use crate::error::{Error, Result};

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Starts writing a new blob whose hash is not known yet.
    async fn stage(&self) -> Result<Box<dyn StagedBlob>>;
    /// Streams the blob with this SHA-256 in chunks of about `chunk` bytes.
    async fn read(&self, sha256: &str, chunk: usize) -> Result<BoxStream<'static, Result<Bytes>>>;
    /// Human-readable location, for logs.
    fn describe(&self) -> String;
}

#[async_trait]
pub trait StagedBlob: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    /// Moves the content to its address; `true` when identical content was already there.
    async fn commit(self: Box<Self>, sha256: &str) -> Result<bool>;
}

fn io_error(what: &str, e: impl std::fmt::Display) -> Error {
    tracing::error!(error = %e, what, "blob store error");
    Error::Unavailable(format!("artifact storage failed ({what}): {e}"))
}

fn key_path(sha256: &str) -> String {
    format!("blobs/sha256/{}/{sha256}", &sha256[..2])
}

/// Blobs under a local directory.
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub async fn open(root: &Path) -> Result<Self> {
        for dir in ["staging", "blobs/sha256"] {
            tokio::fs::create_dir_all(root.join(dir))
                .await
                .map_err(|e| io_error("create dir", e))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }
}

struct FsStaged {
    /// Moved into the blocking thread for each write and back.
    file: Option<std::fs::File>,
    path: PathBuf,
    root: PathBuf,
    done: bool,
    written: u64,
    /// Where writeback was last started (see [`start_writeback`]).
    flushed: u64,
}

/// How much written data may sit in the page cache before its writeback is started.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// Starts (does not wait for) writing `from..to` of `file` to disk, so that the disk works
/// while the upload is still streaming and the final fsync has little left to do.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor and a plain range; the call only schedules I/O.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        // Only an optimisation: the fsync at commit still makes the content durable.
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "sync_file_range failed; the final fsync does all the work");
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _from: u64, _to: u64) {}

impl Drop for FsStaged {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::error!(error = %e, path = %self.path.display(), "cannot remove abandoned staged blob");
            }
        }
    }
}

#[async_trait]
impl StagedBlob for FsStaged {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        use std::io::Write;
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Error::Internal("staged blob already closed".into()))?;
        let (from, to) = (self.flushed, self.written + chunk.len() as u64);
        let kick = to - from >= WRITEBACK_BYTES;
        // Written straight from the received buffer (tokio::fs would copy it first).
        let (file, written) = tokio::task::spawn_blocking(move || {
            let written = file.write_all(&chunk);
            if written.is_ok() && kick {
                start_writeback(&file, from, to);
            }
            (file, written)
        })
        .await
        .map_err(|e| Error::Internal(format!("blob writer thread failed: {e}")))?;
        self.file = Some(file);
        written.map_err(|e| io_error("write", e))?;
        self.written = to;
        if kick {
            self.flushed = to;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>, sha256: &str) -> Result<bool> {
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::Internal("staged blob already closed".into()))?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| Error::Internal(format!("blob writer thread failed: {e}")))?
            .map_err(|e| io_error("fsync", e))?;
        let target = self.root.join(key_path(sha256));
        if tokio::fs::try_exists(&target)
            .await
            .map_err(|e| io_error("stat", e))?
        {
            return Ok(true); // Drop removes the staged copy.
        }
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_error("create dir", e))?;
        }
        tokio::fs::rename(&self.path, &target)
            .await
            .map_err(|e| io_error("rename", e))?;
        self.done = true;
        Ok(false)
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stage(&self) -> Result<Box<dyn StagedBlob>> {
        let path = self
            .root
            .join("staging")
            .join(uuid::Uuid::new_v4().to_string());
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| io_error("create", e))?
            .into_std()
            .await;
        Ok(Box::new(FsStaged {
            file: Some(file),
            path,
            root: self.root.clone(),
            done: false,
            written: 0,
            flushed: 0,
        }))
    }

    async fn read(&self, sha256: &str, chunk: usize) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = self.root.join(key_path(sha256));
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("blob {sha256} is not stored")))
            }
            Err(e) => return Err(io_error("open", e)),
        };
        Ok(tokio_util::io::ReaderStream::with_capacity(file, chunk)
            .map_err(|e| io_error("read", e))
            .boxed())
    }

    fn describe(&self) -> String {
        format!("filesystem {}", self.root.display())
    }
}

/// Blobs in an S3-compatible bucket, through `object_store`.
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    describe: String,
}

impl ObjectBlobStore {
    /// `url` is `s3://bucket[/prefix]`; credentials, region and endpoint come from the
    /// usual `AWS_*` environment variables (`AWS_ENDPOINT` for MinIO, moto and the like).
    pub fn s3(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::invalid("artifact_store", "must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| {
                Error::invalid("artifact_store", format!("cannot configure S3 store: {e}"))
            })?;
        Ok(Self {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_string(),
            describe: format!("S3 {url}"),
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        prefixed(&self.prefix, key)
    }
}

fn prefixed(prefix: &str, key: &str) -> ObjectPath {
    if prefix.is_empty() {
        ObjectPath::from(key)
    } else {
        ObjectPath::from(format!("{prefix}/{key}"))
    }
}

const PART_SIZE: usize = 8 * 1024 * 1024;

struct ObjectStaged {
    upload: Option<WriteMultipart>,
    staging: ObjectPath,
    prefix: String,
    store: Arc<dyn ObjectStore>,
}

impl Drop for ObjectStaged {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            // Abandoned: abort the multipart upload so no parts are left billed and orphaned.
            let staging = self.staging.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = upload.abort().await {
                        tracing::error!(error = %e, %staging, "cannot abort abandoned multipart upload");
                    }
                });
            }
        }
    }
}

#[async_trait]
impl StagedBlob for ObjectStaged {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| Error::Internal("staged blob already closed".into()))?;
        // Bounds memory: at most two parts in flight.
        upload
            .wait_for_capacity(2)
            .await
            .map_err(|e| io_error("upload part", e))?;
        upload.write(&chunk);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, sha256: &str) -> Result<bool> {
        let upload = self
            .upload
            .take()
            .ok_or_else(|| Error::Internal("staged blob already closed".into()))?;
        upload
            .finish()
            .await
            .map_err(|e| io_error("complete upload", e))?;
        let target = prefixed(&self.prefix, &key_path(sha256));
        let existed = match self.store.head(&target).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(io_error("head", e)),
        };
        if !existed {
            self.store
                .copy(&self.staging, &target)
                .await
                .map_err(|e| io_error("copy", e))?;
        }
        if let Err(e) = self.store.delete(&self.staging).await {
            tracing::error!(error = %e, staging = %self.staging, "cannot delete staged object");
        }
        Ok(existed)
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn stage(&self) -> Result<Box<dyn StagedBlob>> {
        let staging = self.path(&format!("staging/{}", uuid::Uuid::new_v4()));
        let upload = self
            .store
            .put_multipart(&staging)
            .await
            .map_err(|e| io_error("start upload", e))?;
        Ok(Box::new(ObjectStaged {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
            staging,
            prefix: self.prefix.clone(),
            store: self.store.clone(),
        }))
    }

    async fn read(&self, sha256: &str, chunk: usize) -> Result<BoxStream<'static, Result<Bytes>>> {
        let got = match self.store.get(&self.path(&key_path(sha256))).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotFound(format!("blob {sha256} is not stored")))
            }
            Err(e) => return Err(io_error("get", e)),
        };
        Ok(rechunk(
            got.into_stream().map_err(|e| io_error("read", e)).boxed(),
            chunk,
        ))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// Regroups network reads (of any size) into messages of exactly `size` bytes, the last
/// one shorter: message sizes stay bounded whatever the storage client delivers.
fn rechunk(
    input: BoxStream<'static, Result<Bytes>>,
    size: usize,
) -> BoxStream<'static, Result<Bytes>> {
    futures::stream::unfold(
        (input, BytesMut::new(), false),
        move |(mut input, mut buf, ended)| async move {
            loop {
                if buf.len() >= size {
                    return Some((Ok(buf.split_to(size).freeze()), (input, buf, ended)));
                }
                if ended {
                    return (!buf.is_empty())
                        .then(|| (Ok(buf.split().freeze()), (input, BytesMut::new(), true)));
                }
                match input.next().await {
                    Some(Ok(b)) => buf.extend_from_slice(&b),
                    Some(Err(e)) => return Some((Err(e), (input, BytesMut::new(), true))),
                    None => {
                        return (!buf.is_empty())
                            .then(|| (Ok(buf.split().freeze()), (input, BytesMut::new(), true)))
                    }
                }
            }
        },
    )
    .boxed()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rechunk_bounds_every_message() {
        let reads: Vec<Result<Bytes>> = [1usize, 700, 3, 2000, 0, 5]
            .iter()
            .enumerate()
            .map(|(i, n)| Ok(Bytes::from(vec![i as u8; *n])))
            .collect();
        let out: Vec<Bytes> = rechunk(futures::stream::iter(reads).boxed(), 256)
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert!(out.iter().all(|b| b.len() <= 256 && !b.is_empty()));
        assert!(out[..out.len() - 1].iter().all(|b| b.len() == 256));
        assert_eq!(out.iter().map(Bytes::len).sum::<usize>(), 2709);
    }
}
