//! [`ModelRegistry`] over registry-svc's gRPC API, with the typed client of
//! `capstan_client`. Connects on first use, so the pipeline starts even while the
//! registry is still coming up.
//!
//! Calls that fail in transit (a replica lost behind a balanced channel) are retried by
//! [`Retry::TRANSIENT`], which is safe because every call here is idempotent or checks on
//! a replay whether the lost attempt took effect.

use std::{collections::BTreeMap, future::Future};

use async_trait::async_trait;
use capstan_client::{failed_in_transit, AuthedChannel, Propagate, Retry};
use capstan_proto::registry::v1 as pb;
use capstan_server::{serve, telemetry};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tonic::{service::interceptor::InterceptedService, Code, Response, Status};
use tracing::Instrument;

use super::token_file::TokenFile;
use crate::{
    domain::showcase::registry::{
        AliasRef, ArtifactFile, ArtifactMeta, HistoryEntry, ModelRegistry, NewRun, RunRef,
    },
    error::{Error, Result},
};

/// Upload chunk size: far below every message limit.
const CHUNK: usize = 256 * 1024;

pub struct GrpcRegistry {
    url: String,
    token: Option<TokenFile>,
    max_message_bytes: usize,
    channel: OnceCell<AuthedChannel>,
}

impl GrpcRegistry {
    pub fn new(url: &str, token: Option<TokenFile>, max_message_bytes: usize) -> Self {
        Self {
            url: url.to_string(),
            token,
            max_message_bytes,
            channel: OnceCell::new(),
        }
    }

    async fn channel(&self) -> Result<AuthedChannel> {
        self.channel
            .get_or_try_init(|| async {
                let token = self.token.as_ref().map(TokenFile::bearer);
                capstan_client::connect_with(&self.url, token.unwrap_or_default())
                    .await
                    .map_err(|e| {
                        Error::unavailable(format!(
                            "cannot reach the registry at {}: {e:#}",
                            self.url
                        ))
                    })
            })
            .await
            .cloned()
    }

    /// A client whose calls carry what [`propagate`] says.
    fn registry(&self, channel: AuthedChannel) -> Client {
        Client::new(InterceptedService::new(channel, propagate()))
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    /// Runs `attempt` under [`Retry::TRANSIENT`], in a client span named for the call.
    /// Its flag says that an earlier attempt failed in transit and so may have taken
    /// effect: a call that a replay would apply twice checks that first.
    async fn call<T, F, Fut>(&self, name: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(AuthedChannel, bool) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let span = serve::trace_span(|[request_id, operation_id, step]| {
            tracing::info_span!(
                "registry call",
                otel.name = %format_args!("registry {name}"),
                otel.kind = "client",
                rpc.system = "grpc",
                rpc.method = name,
                request_id,
                operation_id,
                step,
            )
        });
        async {
            if let Some(token) = &self.token {
                token.refresh().await;
            }
            let channel = self.channel().await?;
            Retry::TRANSIENT
                .run(name, |replay| attempt(channel.clone(), replay))
                .await
                .map_err(|s| match &self.token {
                    Some(token) if s.code() == Code::Unauthenticated => {
                        Error::PermissionDenied(format!(
                            "registry {name}: the registry refuses the token of --registry-token-file {}: {}",
                            token.path().display(),
                            s.message()
                        ))
                    }
                    _ => upstream(name, s),
                })
        }
        .instrument(span)
        .await
    }
}

/// What the registry's calls carry: the trace context, the request id, and the operation
/// and step of the work under way (see [`Propagate`]).
fn propagate() -> Propagate {
    let Some(scope) = serve::current() else {
        return Propagate::default();
    };
    let mut propagate = Propagate::new(Some(&*scope.request_id));
    if let Some(op) = scope.operation_id {
        propagate = propagate.with_baggage(telemetry::OPERATION_BAGGAGE, &*op);
    }
    if let Some(step) = scope.step {
        propagate = propagate.with_baggage(telemetry::STEP_BAGGAGE, &*step);
    }
    if let Some(dropped) = scope.dropped_trace {
        propagate = propagate.with_dropped_trace(dropped);
    }
    propagate
}

/// The registry's client as the adapter uses it: over the shared channel, each call
/// carrying what [`GrpcRegistry::registry`] set.
type Client = pb::registry_service_client::RegistryServiceClient<
    InterceptedService<AuthedChannel, Propagate>,
>;

/// Maps a registry status to this crate's error, naming the call: what the registry
/// refused for a state reason (including a run or alias it does not have) is a
/// precondition of the step, a lost compare-and-swap a conflict, and a registry that
/// cannot answer is unavailable.
fn upstream(call: &str, s: tonic::Status) -> Error {
    let m = format!("registry {call}: {}", s.message());
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => Error::invalid("registry", m),
        Code::NotFound | Code::FailedPrecondition | Code::AlreadyExists => Error::Precondition(m),
        Code::Aborted => Error::Conflict(m),
        Code::DataLoss => Error::Corrupt(m),
        Code::PermissionDenied | Code::Unauthenticated => Error::PermissionDenied(m),
        Code::ResourceExhausted => Error::Exhausted(m),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Error::Unavailable {
            message: m,
            source: Some(capstan_server::error::source(s)),
        },
        _ if failed_in_transit(&s) => Error::Unavailable {
            message: m,
            source: Some(capstan_server::error::source(s)),
        },
        _ => Error::Internal {
            message: m,
            source: Some(capstan_server::error::source(s)),
        },
    }
}

fn run_ref(run: pb::Run) -> RunRef {
    RunRef {
        succeeded: run.status == pb::RunStatus::Succeeded as i32,
        run_id: run.run_id,
        model_type: run.model_type,
        artifact_uri: run.artifact_uri,
        artifact_sha256: run.artifact_sha256,
        artifacts: run.artifacts.into_iter().map(|a| (a.name, a.uri)).collect(),
        metrics: run.metrics.into_iter().collect(),
    }
}

fn alias_ref(a: Option<pb::Alias>, call: &str) -> Result<AliasRef> {
    let a = a.ok_or_else(|| Error::internal(format!("registry {call} returned no alias")))?;
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
        // Over the balanced channel, as every call: one URL of a list is no address alone.
        let status = self
            .call("health check", |ch, _| async move {
                let request = HealthCheckRequest {
                    service: "capstan.registry.v1.RegistryService".into(),
                };
                HealthClient::new(InterceptedService::new(ch, propagate()))
                    .check(request)
                    .await
            })
            .await?
            .into_inner()
            .status;
        Ok(ServingStatus::try_from(status)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| format!("UNKNOWN({status})")))
    }

    async fn create_run(&self, run: NewRun) -> Result<RunRef> {
        let request = pb::CreateRunRequest {
            request_id: run.request_id,
            name: run.name,
            model_type: run.model_type,
            params: run.params.into_iter().collect(),
            tags: run.tags.into_iter().collect(),
            metrics: Default::default(),
            status: pb::RunStatus::Running as i32,
            heartbeat_timeout: None,
            namespace: String::new(),
        };
        // Idempotent on request_id: a replay returns the run the lost attempt created.
        let r = self
            .call("CreateRun", |ch, _| {
                let mut c = self.registry(ch);
                let request = request.clone();
                async move { c.create_run(request).await.map(Response::into_inner) }
            })
            .await?;
        Ok(run_ref(r))
    }

    async fn get_run(&self, run_id: &str) -> Result<RunRef> {
        let r = self
            .call("GetRun", |ch, _| {
                let mut c = self.registry(ch);
                let request = pb::GetRunRequest {
                    run_id: run_id.into(),
                    ..Default::default()
                };
                async move { c.get_run(request).await.map(Response::into_inner) }
            })
            .await?;
        Ok(run_ref(r))
    }

    async fn upload_artifact(
        &self,
        run_id: &str,
        file: ArtifactFile<'_>,
        namespace: &str,
        content: Vec<u8>,
    ) -> Result<String> {
        use pb::upload_artifact_request::Payload;
        let header = pb::UploadArtifactRequest {
            payload: Some(Payload::Header(pb::ArtifactHeader {
                run_id: run_id.into(),
                name: file.file_name.into(),
                namespace: namespace.into(),
                expected_sha256: hex::encode(Sha256::digest(&content)),
                expected_size: Some(content.len() as i64),
                artifact: file.artifact.into(),
                media_type: file.media_type.into(),
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
        // A replay attaches the same content-addressed blob again: the run is still RUNNING.
        let r = self
            .call("UploadArtifact", |ch, _| {
                let mut c = self.registry(ch);
                let stream =
                    futures::stream::iter(std::iter::once(header.clone()).chain(chunks.clone()));
                async move { c.upload_artifact(stream).await.map(Response::into_inner) }
            })
            .await?;
        Ok(r.artifact_uri)
    }

    async fn finish_run(&self, run_id: &str, metrics: BTreeMap<String, f64>) -> Result<RunRef> {
        let request = pb::UpdateRunRequest {
            run: Some(pb::Run {
                run_id: run_id.into(),
                metrics: metrics.into_iter().collect(),
                status: pb::RunStatus::Succeeded as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["metrics".into(), "status".into()],
            }),
        };
        let r = self
            .call("UpdateRun", |ch, replay| {
                let mut c = self.registry(ch);
                let (request, run_id) = (request.clone(), run_id.to_string());
                async move {
                    // A terminal run refuses a second update: if the lost attempt landed,
                    // its outcome is the answer.
                    if replay {
                        let run = c
                            .get_run(pb::GetRunRequest {
                                run_id,
                                ..Default::default()
                            })
                            .await?
                            .into_inner();
                        if run.status == pb::RunStatus::Succeeded as i32 {
                            return Ok(run);
                        }
                    }
                    c.update_run(request).await.map(Response::into_inner)
                }
            })
            .await?;
        Ok(run_ref(r))
    }

    async fn download_artifact(
        &self,
        run_id: &str,
        max_bytes: usize,
    ) -> Result<(ArtifactMeta, Vec<u8>)> {
        // A stream cut midway starts over: the outer result is the transport's, the inner
        // one what this side makes of the bytes.
        self.call("DownloadArtifact", |ch, _| {
            download(self.registry(ch), run_id.to_string(), max_bytes)
        })
        .await?
    }

    async fn get_alias(&self, alias: &str) -> Result<Option<AliasRef>> {
        let a = self
            .call("GetAlias", |ch, _| {
                lookup_alias(self.registry(ch), alias.to_string())
            })
            .await?;
        a.map(|a| alias_ref(Some(a), "GetAlias")).transpose()
    }

    async fn set_alias(
        &self,
        alias: &str,
        run_id: &str,
        expected_revision: i64,
        reason: &str,
    ) -> Result<AliasRef> {
        let request = pb::SetAliasRequest {
            alias: alias.into(),
            run_id: run_id.into(),
            description: String::new(),
            expected_revision: Some(expected_revision),
            reason: reason.into(),
            ..Default::default()
        };
        // Compare-and-swap: a replay of a write that landed is refused (ABORTED), never
        // applied twice; the caller re-reads the alias.
        let a = self
            .call("SetAlias", |ch, _| {
                let mut c = self.registry(ch);
                let request = request.clone();
                async move { c.set_alias(request).await.map(Response::into_inner) }
            })
            .await?;
        alias_ref(Some(a), "SetAlias")
    }

    async fn promote(
        &self,
        alias: &str,
        run_id: &str,
        force: bool,
        reason: &str,
    ) -> Result<AliasRef> {
        let request = pb::PromoteRunRequest {
            alias: alias.into(),
            run_id: run_id.into(),
            metric: "wape".into(),
            higher_is_better: false,
            force,
            dry_run: false,
            reason: reason.into(),
            expected_revision: None,
            ..Default::default()
        };
        let a = self
            .call("PromoteRun", |ch, replay| {
                let mut c = self.registry(ch);
                let (request, alias, run_id) =
                    (request.clone(), alias.to_string(), run_id.to_string());
                async move {
                    // The lost attempt took effect when the alias points at the run now;
                    // sending it again would add a second revision.
                    if replay {
                        if let Some(a) = lookup_alias(c.clone(), alias).await? {
                            if a.run_id == run_id {
                                return Ok(Some(a));
                            }
                        }
                    }
                    c.promote_run(request).await.map(|r| r.into_inner().alias)
                }
            })
            .await?;
        alias_ref(a, "PromoteRun")
    }

    async fn alias_history(&self, alias: &str, limit: usize) -> Result<Vec<HistoryEntry>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .call("ListAliasHistory", |ch, _| {
                    let mut c = self.registry(ch);
                    let request = pb::ListAliasHistoryRequest {
                        alias: alias.into(),
                        page_size: 500,
                        page_token: token.clone(),
                        ..Default::default()
                    };
                    async move {
                        c.list_alias_history(request)
                            .await
                            .map(Response::into_inner)
                    }
                })
                .await?;
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

/// The alias, or `None` when it does not exist.
async fn lookup_alias(
    mut c: Client,
    alias: String,
) -> std::result::Result<Option<pb::Alias>, Status> {
    match c
        .get_alias(pb::GetAliasRequest {
            alias,
            ..Default::default()
        })
        .await
    {
        Ok(a) => Ok(Some(a.into_inner())),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// One download: metadata first, then at most `max_bytes` of chunks.
async fn download(
    mut c: Client,
    run_id: String,
    max_bytes: usize,
) -> std::result::Result<Result<(ArtifactMeta, Vec<u8>)>, Status> {
    use pb::download_artifact_response::Payload;
    let mut stream = c
        .download_artifact(pb::DownloadArtifactRequest {
            run_id: run_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let meta = match stream.next().await {
        Some(Ok(pb::DownloadArtifactResponse {
            payload: Some(Payload::Metadata(m)),
        })) => m,
        Some(Err(s)) => return Err(s),
        _ => {
            return Ok(Err(Error::Corrupt(
                "registry DownloadArtifact: the stream did not start with metadata".into(),
            )))
        }
    };
    if meta.size_bytes < 0 || meta.size_bytes as u64 > max_bytes as u64 {
        return Ok(Err(Error::Exhausted(format!(
            "artifact of run {run_id} has {} bytes; at most {max_bytes} are loaded",
            meta.size_bytes
        ))));
    }
    let mut content = Vec::with_capacity(meta.size_bytes as usize);
    while let Some(msg) = stream.next().await {
        match msg?.payload {
            Some(Payload::Chunk(c)) => {
                if content.len() + c.len() > max_bytes {
                    return Ok(Err(Error::Exhausted(format!(
                        "artifact of run {run_id} exceeds {max_bytes} bytes"
                    ))));
                }
                content.extend_from_slice(&c);
            }
            _ => {
                return Ok(Err(Error::Corrupt(
                    "registry DownloadArtifact: unexpected message after the metadata".into(),
                )))
            }
        }
    }
    Ok(Ok((
        ArtifactMeta {
            uri: meta.artifact_uri,
            sha256: meta.sha256,
            size_bytes: meta.size_bytes,
        },
        content,
    )))
}
