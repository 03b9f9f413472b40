//! Blobs in an S3-compatible bucket, through `object_store`: a multipart upload to
//! `staging/{uuid}`, then a copy to `blobs/sha256/{first two hex}/{sha256}`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use object_store::{aws::AmazonS3Builder, path::Path as ObjectPath, ObjectStore, WriteMultipart};

use super::{io_error, key_path};
use crate::{
    domain::ports::{BlobStore, StagedBlob, StoredBlob},
    error::{Error, Missing, Result},
};

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
        Self::s3_with(url, AmazonS3Builder::from_env())
    }

    /// As [`ObjectBlobStore::s3`], with the connection settings (endpoint, credentials,
    /// region) of `settings` instead of the environment's.
    pub fn s3_with(url: &str, settings: AmazonS3Builder) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::invalid("artifact_store", "must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let store = settings.with_bucket_name(bucket).build().map_err(|e| {
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
            .ok_or_else(|| Error::bug("staged blob already closed"))?;
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
            .ok_or_else(|| Error::bug("staged blob already closed"))?;
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
                return Err(Error::NotFound(Missing::Blob(sha256.into())))
            }
            Err(e) => return Err(io_error("get", e)),
        };
        Ok(rechunk(
            got.into_stream().map_err(|e| io_error("read", e)).boxed(),
            chunk,
        ))
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredBlob>> {
        // Keys sort as their hashes do: `blobs/sha256/{first two}/{sha256}`.
        let prefix = self.path("blobs/sha256");
        let listed = match after {
            Some(sha) => self
                .store
                .list_with_offset(Some(&prefix), &self.path(&key_path(sha))),
            None => self.store.list(Some(&prefix)),
        };
        let metas: Vec<object_store::ObjectMeta> = listed
            .take(limit)
            .try_collect()
            .await
            .map_err(|e| io_error("list", e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let sha = super::sha_of_key(m.location.as_ref())?.to_string();
                Some(StoredBlob {
                    sha256: sha,
                    written: m.last_modified.timestamp_micros(),
                })
            })
            .collect())
    }

    async fn delete(&self, sha256: &str) -> Result<()> {
        match self.store.delete(&self.path(&key_path(sha256))).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error("delete", e)),
        }
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::StreamExt;

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
