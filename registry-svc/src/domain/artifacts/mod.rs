//! Artifact upload and download: hash while streaming, check what the client promised,
//! store content-addressed, attach to the run. Memory stays bounded by a few chunks.

mod collector;

use bytes::Bytes;
use capstan_proto::artifact_uri::{self, ArtifactUri};
use futures::{stream::BoxStream, Stream, StreamExt};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    domain::{
        ports::StagedBlob,
        registry::Registry,
        runs::{Artifact, ModelRun, RunPatch, MODEL_ARTIFACT},
        validate,
    },
    error::{Error, Missing, Result, Validator},
};

/// Largest artifact accepted (64 GiB).
pub const MAX_ARTIFACT_BYTES: i64 = 64 << 30;
/// Size of download chunks: large enough for throughput, far under message limits.
pub const CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Default)]
pub struct UploadHeader {
    pub run_id: String,
    pub name: String,
    /// The run's namespace (the api layer fills in the default); the URI starts with it.
    pub namespace: String,
    pub expected_sha256: String,
    pub expected_size: Option<i64>,
    /// The artifact's name in the run; empty is the model.
    pub artifact: String,
    /// Empty: none given.
    pub media_type: String,
}

/// What an upload sent, staged and hashed.
struct Received {
    staged: Box<dyn StagedBlob>,
    sha256: String,
    size: i64,
}

#[derive(Debug, Clone)]
pub struct Uploaded {
    pub run: ModelRun,
    /// Its name in the run, and what was attached.
    pub name: String,
    pub artifact: Artifact,
    pub deduplicated: bool,
}

impl UploadHeader {
    fn validate(&self) -> Result<Uuid> {
        let mut v = Validator::default();
        let id = validate::uuid(&mut v, "header.run_id", &self.run_id);
        v.check(
            !self.name.is_empty()
                && self.name.len() <= 255
                && !self.name.contains(['/', '\\', '\0']),
            "header.name",
            || "must be a file name of 1-255 bytes without path separators".into(),
        );
        validate::namespace(&mut v, "header.namespace", &self.namespace);
        v.check(
            self.expected_sha256.is_empty() || validate::sha256_hex_ok(&self.expected_sha256),
            "header.expected_sha256",
            || "must be 64 lowercase hex characters".into(),
        );
        if !self.artifact.is_empty() {
            validate::artifact_name(&mut v, "header.artifact", &self.artifact);
        }
        if !self.media_type.is_empty() {
            validate::media_type(&mut v, "header.media_type", &self.media_type);
        }
        if let Some(size) = self.expected_size {
            v.check(
                (0..=MAX_ARTIFACT_BYTES).contains(&size),
                "header.expected_size",
                || format!("must be between 0 and {MAX_ARTIFACT_BYTES}, got {size}"),
            );
        }
        v.finish()?;
        id.ok_or_else(|| Error::invalid("header.run_id", "is not a UUID"))
    }
}

impl Registry {
    /// Consumes the chunks after the header. Nothing is attached unless every check passes;
    /// a staged blob that fails a check is removed.
    pub async fn upload_artifact(
        &self,
        header: UploadHeader,
        chunks: impl Stream<Item = Result<Bytes>> + Unpin + Send,
        actor: &str,
    ) -> Result<Uploaded> {
        let run_id = header.validate()?;
        let namespace = header.namespace.as_str();
        let run = self.get_run(namespace, run_id).await?;
        if run.status.is_terminal() {
            return Err(Error::FailedPrecondition(format!(
                "run {run_id} is {}: artifacts are attached before a run ends",
                run.status.as_str()
            )));
        }
        let received = self.receive(chunks, header.expected_size).await?;
        let (sha256, size) = (&received.sha256, received.size);
        if let Some(expected) = header.expected_size {
            if expected != size {
                return Err(Error::invalid(
                    "header.expected_size",
                    format!("expected {expected} bytes, received {size}"),
                ));
            }
        }
        if !header.expected_sha256.is_empty() && header.expected_sha256 != *sha256 {
            return Err(Error::DataLoss(format!(
                "content SHA-256 is {sha256}, the header expected {}; nothing was stored",
                header.expected_sha256
            )));
        }
        // Held from before the content lands until the run refers to it: the collector
        // cannot remove the blob in between.
        let lease = self.lease_blob(sha256).await?;
        let attached = self.attach(header, &run, received, actor).await;
        self.release_blob(lease).await;
        attached
    }

    /// Commits the received content and attaches it to the run.
    async fn attach(
        &self,
        header: UploadHeader,
        run: &ModelRun,
        received: Received,
        actor: &str,
    ) -> Result<Uploaded> {
        let Received {
            staged,
            sha256,
            size,
        } = received;
        let (namespace, run_id) = (header.namespace.as_str(), run.id);
        let ext = artifact_uri::extension_of(&header.name);
        let deduplicated = staged.commit(&sha256).await?;
        let uri = ArtifactUri::new(namespace, &run.model_type, &sha256, ext.as_deref())
            .map_err(|e| Error::invalid("header.namespace", e.to_string()))?;
        let artifact = Artifact {
            uri,
            sha256,
            size_bytes: size,
            media_type: header.media_type,
        };
        let name = match header.artifact.as_str() {
            "" => MODEL_ARTIFACT.to_string(),
            named => named.to_string(),
        };
        let patch = if name == MODEL_ARTIFACT {
            RunPatch {
                artifact: Some(artifact.clone()),
                ..Default::default()
            }
        } else {
            RunPatch {
                attachment: Some((name.clone(), artifact.clone())),
                ..Default::default()
            }
        };
        let run = self.update_run(namespace, run_id, &patch, actor).await?;
        metrics::counter!("capstan_artifact_bytes_uploaded_total").increment(size as u64);
        Ok(Uploaded {
            run,
            name,
            artifact,
            deduplicated,
        })
    }

    /// Streams the chunks into a staged blob while hashing them; writing runs beside
    /// hashing, and the channel between them bounds what is buffered.
    async fn receive(
        &self,
        mut chunks: impl Stream<Item = Result<Bytes>> + Unpin + Send,
        expected_size: Option<i64>,
    ) -> Result<Received> {
        let mut staged = self.blobs.stage().await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let writer = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                staged.write(chunk).await?;
            }
            Ok::<_, Error>(staged)
        });
        let mut hasher = Sha256::new();
        let mut size: i64 = 0;
        let limit = expected_size.unwrap_or(MAX_ARTIFACT_BYTES);
        let received: Result<()> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                size += chunk.len() as i64;
                if size > limit {
                    return Err(Error::invalid(
                        "header.expected_size",
                        format!("content exceeds the expected {limit} bytes"),
                    ));
                }
                hasher.update(&chunk);
                if tx.send(chunk).await.is_err() {
                    break; // The writer failed; its error is reported below.
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let staged = writer
            .await
            .map_err(|e| Error::internal("the artifact writer task", e))?;
        received?;
        Ok(Received {
            staged: staged?,
            sha256: hex::encode(hasher.finalize()),
            size,
        })
    }

    /// The run's artifact called `name` (`MODEL_ARTIFACT`: the model) and a stream of its
    /// content.
    pub async fn download_artifact(
        &self,
        namespace: &str,
        run_id: Uuid,
        name: &str,
    ) -> Result<(Artifact, BoxStream<'static, Result<Bytes>>)> {
        let run = self.get_run(namespace, run_id).await?;
        let artifact = run
            .artifact_named(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(Missing::Artifact(run_id, name.to_string())))?;
        let stream = match self.blobs.read(&artifact.sha256, CHUNK_BYTES).await {
            Ok(s) => s,
            Err(Error::NotFound(Missing::Blob(_))) => {
                return Err(Error::DataLoss(format!(
                    "artifact {} of run {run_id} is referenced but its content is not stored",
                    artifact.uri
                )))
            }
            Err(e) => return Err(e),
        };
        let sent = metrics::counter!("capstan_artifact_bytes_downloaded_total");
        let stream = stream
            .inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    sent.increment(bytes.len() as u64);
                }
            })
            .boxed();
        Ok((artifact, stream))
    }
}
