//! [`ModelRegistry`] over registry-svc's gRPC API, with the typed client of
//! `capstan_server::client`. Connects on first use, so the pipeline starts even while the
//! registry is still coming up.

use std::collections::BTreeMap;

use async_trait::async_trait;
use capstan_proto::registry::v1 as pb;
use capstan_server::client::{self, RegistryClient};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tonic::Code;

use crate::{
    domain::workflows::registry::{
        AliasRef, ArtifactMeta, HistoryEntry, ModelRegistry, NewRun, RunRef,
    },
    error::{Error, Result},
};

/// Upload chunk size: far below every message limit.
const CHUNK: usize = 256 * 1024;

pub struct GrpcRegistry {
    url: String,
    token: Option<String>,
    max_message_bytes: usize,
    client: OnceCell<RegistryClient>,
}

impl GrpcRegistry {
    pub fn new(url: &str, token: Option<String>, max_message_bytes: usize) -> Self {
        Self {
            url: url.to_string(),
            token,
            max_message_bytes,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<RegistryClient> {
        self.client
            .get_or_try_init(|| async {
                client::registry_client(&self.url, self.token.as_deref(), self.max_message_bytes)
                    .await
                    .map_err(|e| {
                        Error::Unavailable(format!(
                            "cannot reach the registry at {}: {e:#}",
                            self.url
                        ))
                    })
            })
            .await
            .cloned()
    }
}

/// Maps a registry status to this crate's error, keeping its code and naming the call.
fn upstream(call: &str, s: tonic::Status) -> Error {
    let m = format!("registry {call}: {}", s.message());
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => Error::invalid("registry", m),
        Code::NotFound => Error::NotFound(m),
        Code::FailedPrecondition | Code::AlreadyExists => Error::FailedPrecondition(m),
        Code::Aborted => Error::Aborted(m),
        Code::DataLoss => Error::DataLoss(m),
        Code::PermissionDenied | Code::Unauthenticated => Error::PermissionDenied(m),
        Code::ResourceExhausted => Error::ResourceExhausted(m),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Error::Unavailable(m),
        _ => Error::Internal(m),
    }
}

fn run_ref(run: pb::Run) -> RunRef {
    RunRef {
        succeeded: run.status == pb::RunStatus::Succeeded as i32,
        run_id: run.run_id,
        model_type: run.model_type,
        artifact_uri: run.artifact_uri,
        artifact_sha256: run.artifact_sha256,
        metrics: run.metrics.into_iter().collect(),
    }
}

fn alias_ref(a: Option<pb::Alias>, call: &str) -> Result<AliasRef> {
    let a = a.ok_or_else(|| Error::Internal(format!("registry {call} returned no alias")))?;
    Ok(AliasRef {
        run_id: a.run_id,
        revision: a.revision,
    })
}

#[async_trait]
impl ModelRegistry for GrpcRegistry {
    async fn health(&self) -> Result<String> {
        use tonic_health::pb::{
            health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
        };
        let channel = client::endpoint(&self.url)
            .map_err(|e| Error::Unavailable(format!("registry url {}: {e}", self.url)))?
            .connect()
            .await
            .map_err(|e| {
                Error::Unavailable(format!("cannot reach the registry at {}: {e}", self.url))
            })?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "capstan.registry.v1.RegistryService".into(),
            })
            .await
            .map_err(|s| upstream("health check", s))?
            .into_inner()
            .status;
        Ok(ServingStatus::try_from(status)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| format!("UNKNOWN({status})")))
    }

    async fn create_run(&self, run: NewRun) -> Result<RunRef> {
        let r = self
            .client()
            .await?
            .create_run(pb::CreateRunRequest {
                request_id: run.request_id,
                name: run.name,
                model_type: run.model_type,
                params: run.params.into_iter().collect(),
                tags: run.tags.into_iter().collect(),
                metrics: Default::default(),
                status: pb::RunStatus::Running as i32,
                heartbeat_timeout: None,
            })
            .await
            .map_err(|s| upstream("CreateRun", s))?;
        Ok(run_ref(r.into_inner()))
    }

    async fn get_run(&self, run_id: &str) -> Result<RunRef> {
        let r = self
            .client()
            .await?
            .get_run(pb::GetRunRequest {
                run_id: run_id.into(),
            })
            .await
            .map_err(|s| upstream("GetRun", s))?;
        Ok(run_ref(r.into_inner()))
    }

    async fn upload_artifact(
        &self,
        run_id: &str,
        file_name: &str,
        namespace: &str,
        content: Vec<u8>,
    ) -> Result<String> {
        use pb::upload_artifact_request::Payload;
        let header = pb::UploadArtifactRequest {
            payload: Some(Payload::Header(pb::ArtifactHeader {
                run_id: run_id.into(),
                name: file_name.into(),
                namespace: namespace.into(),
                expected_sha256: hex::encode(Sha256::digest(&content)),
                expected_size: Some(content.len() as i64),
            })),
        };
        let content = bytes::Bytes::from(content);
        let chunks: Vec<_> = (0..content.len())
            .step_by(CHUNK)
            .map(|at| pb::UploadArtifactRequest {
                payload: Some(Payload::Chunk(
                    content.slice(at..(at + CHUNK).min(content.len())),
                )),
            })
            .collect();
        let stream = futures::stream::iter(std::iter::once(header).chain(chunks));
        let r = self
            .client()
            .await?
            .upload_artifact(stream)
            .await
            .map_err(|s| upstream("UploadArtifact", s))?;
        Ok(r.into_inner().artifact_uri)
    }

    async fn finish_run(&self, run_id: &str, metrics: BTreeMap<String, f64>) -> Result<RunRef> {
        let r = self
            .client()
            .await?
            .update_run(pb::UpdateRunRequest {
                run: Some(pb::Run {
                    run_id: run_id.into(),
                    metrics: metrics.into_iter().collect(),
                    status: pb::RunStatus::Succeeded as i32,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["metrics".into(), "status".into()],
                }),
            })
            .await
            .map_err(|s| upstream("UpdateRun", s))?;
        Ok(run_ref(r.into_inner()))
    }

    async fn download_artifact(
        &self,
        run_id: &str,
        max_bytes: usize,
    ) -> Result<(ArtifactMeta, Vec<u8>)> {
        use pb::download_artifact_response::Payload;
        let mut stream = self
            .client()
            .await?
            .download_artifact(pb::DownloadArtifactRequest {
                run_id: run_id.into(),
            })
            .await
            .map_err(|s| upstream("DownloadArtifact", s))?
            .into_inner();
        let meta = match stream.next().await {
            Some(Ok(pb::DownloadArtifactResponse {
                payload: Some(Payload::Metadata(m)),
            })) => m,
            Some(Err(s)) => return Err(upstream("DownloadArtifact", s)),
            _ => {
                return Err(Error::DataLoss(
                    "registry DownloadArtifact: the stream did not start with metadata".into(),
                ))
            }
        };
        if meta.size_bytes < 0 || meta.size_bytes as u64 > max_bytes as u64 {
            return Err(Error::ResourceExhausted(format!(
                "artifact of run {run_id} has {} bytes; at most {max_bytes} are loaded",
                meta.size_bytes
            )));
        }
        let mut content = Vec::with_capacity(meta.size_bytes as usize);
        while let Some(msg) = stream.next().await {
            match msg.map_err(|s| upstream("DownloadArtifact", s))?.payload {
                Some(Payload::Chunk(c)) => {
                    if content.len() + c.len() > max_bytes {
                        return Err(Error::ResourceExhausted(format!(
                            "artifact of run {run_id} exceeds {max_bytes} bytes"
                        )));
                    }
                    content.extend_from_slice(&c);
                }
                _ => {
                    return Err(Error::DataLoss(
                        "registry DownloadArtifact: unexpected message after the metadata".into(),
                    ))
                }
            }
        }
        Ok((
            ArtifactMeta {
                uri: meta.artifact_uri,
                sha256: meta.sha256,
                size_bytes: meta.size_bytes,
            },
            content,
        ))
    }

    async fn get_alias(&self, alias: &str) -> Result<Option<AliasRef>> {
        match self
            .client()
            .await?
            .get_alias(pb::GetAliasRequest {
                alias: alias.into(),
            })
            .await
        {
            Ok(a) => Ok(Some(alias_ref(Some(a.into_inner()), "GetAlias")?)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(upstream("GetAlias", s)),
        }
    }

    async fn set_alias(
        &self,
        alias: &str,
        run_id: &str,
        expected_revision: i64,
        reason: &str,
    ) -> Result<AliasRef> {
        let a = self
            .client()
            .await?
            .set_alias(pb::SetAliasRequest {
                alias: alias.into(),
                run_id: run_id.into(),
                description: String::new(),
                expected_revision: Some(expected_revision),
                reason: reason.into(),
            })
            .await
            .map_err(|s| upstream("SetAlias", s))?;
        alias_ref(Some(a.into_inner()), "SetAlias")
    }

    async fn promote(
        &self,
        alias: &str,
        run_id: &str,
        force: bool,
        reason: &str,
    ) -> Result<AliasRef> {
        let r = self
            .client()
            .await?
            .promote_run(pb::PromoteRunRequest {
                alias: alias.into(),
                run_id: run_id.into(),
                metric: "wape".into(),
                higher_is_better: false,
                force,
                dry_run: false,
                reason: reason.into(),
                expected_revision: None,
            })
            .await
            .map_err(|s| upstream("PromoteRun", s))?;
        alias_ref(r.into_inner().alias, "PromoteRun")
    }

    async fn alias_history(&self, alias: &str, limit: usize) -> Result<Vec<HistoryEntry>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .client()
                .await?
                .list_alias_history(pb::ListAliasHistoryRequest {
                    alias: alias.into(),
                    page_size: 500,
                    page_token: token,
                })
                .await
                .map_err(|s| upstream("ListAliasHistory", s))?
                .into_inner();
            out.extend(r.entries.into_iter().map(|e| HistoryEntry {
                revision: e.revision,
                run_id: e.run_id,
                previous_run_id: e.previous_run_id,
                reason: e.reason,
            }));
            if r.next_page_token.is_empty() || out.len() >= limit {
                out.truncate(limit);
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }
}
