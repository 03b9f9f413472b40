//! The gRPC layer: authorization, request mapping, status codes. Thin by design: every
//! rule lives in `domain`.

mod aliases;
mod runs;
mod status;

use std::{pin::Pin, sync::Arc};

use capstan_proto::registry::v1::{self as pb, registry_service_server::RegistryService};
use capstan_server::{
    auth::{Principal, DEFAULT_NAMESPACE},
    serve,
};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::{
    domain::{
        aliases::{PromoteRun, SetAlias},
        artifacts::UploadHeader,
        registry::Registry,
        runs::{ListRuns, NewRun, RunFilter, MODEL_ARTIFACT},
        validate,
    },
    error::{Error, Missing, Validator},
};

pub use capstan_proto::registry::v1::registry_service_server::RegistryServiceServer;

pub struct RegistryApi {
    registry: Arc<Registry>,
    shutdown: CancellationToken,
}

impl RegistryApi {
    pub fn new(registry: Arc<Registry>, shutdown: CancellationToken) -> Self {
        Self { registry, shutdown }
    }
}

type ApiResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The namespace a request names (`default` when it names none), checked.
fn namespace_of(field: &str, value: &str) -> Result<String, Error> {
    if value.is_empty() {
        return Ok(DEFAULT_NAMESPACE.into());
    }
    let mut v = Validator::default();
    validate::namespace(&mut v, field, value);
    v.finish()?;
    Ok(value.into())
}

/// A read of `namespace`: a caller without a read grant learns nothing, not even whether
/// the namespace exists (NOT_FOUND).
#[allow(clippy::result_large_err)]
fn reader<T>(
    req: &Request<T>,
    field: &str,
    namespace: &str,
) -> Result<(Principal, String), Status> {
    let p = Principal::of(req)?;
    let ns = namespace_of(field, namespace)?;
    if !p.can_read(&ns) {
        return Err(Error::NotFound(Missing::Namespace(ns)).into());
    }
    Ok((p, ns))
}

/// A write to `namespace`: it needs a write grant there (admins have every one).
#[allow(clippy::result_large_err)]
fn writer<T>(
    req: &Request<T>,
    field: &str,
    namespace: &str,
) -> Result<(Principal, String), Status> {
    let p = Principal::of(req)?;
    let ns = write_grant(&p, field, namespace)?;
    Ok((p, ns))
}

#[allow(clippy::result_large_err)]
fn write_grant(p: &Principal, field: &str, namespace: &str) -> Result<String, Status> {
    let ns = namespace_of(field, namespace)?;
    if !p.can_write(&ns) {
        return Err(Error::PermissionDenied(format!(
            "{} (role {:?}) may not write namespace {ns:?}",
            p.subject, p.role
        ))
        .into());
    }
    Ok(ns)
}

fn run_id(field: &str, value: &str) -> Result<Uuid, Error> {
    let mut v = Validator::default();
    let id = validate::uuid(&mut v, field, value);
    v.finish()?;
    id.ok_or_else(|| Error::invalid(field, "is not a UUID"))
}

#[tonic::async_trait]
impl RegistryService for RegistryApi {
    async fn create_run(&self, req: Request<pb::CreateRunRequest>) -> ApiResult<pb::Run> {
        let (p, ns) = writer(&req, "namespace", &req.get_ref().namespace)?;
        let mut new = NewRun::try_from(req.into_inner())?;
        new.namespace = ns;
        let run = self.registry.create_run(new, &p.subject).await?;
        Ok(Response::new(runs::run_to_pb(run)))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> ApiResult<pb::Run> {
        let (_, ns) = reader(&req, "namespace", &req.get_ref().namespace)?;
        let run = self
            .registry
            .get_run(&ns, run_id("run_id", &req.get_ref().run_id)?)
            .await?;
        Ok(Response::new(runs::run_to_pb(run)))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> ApiResult<pb::ListRunsResponse> {
        let (_, namespace) = reader(&req, "namespace", &req.get_ref().namespace)?;
        let r = req.into_inner();
        let query = ListRuns {
            namespace,
            filter: RunFilter {
                status: runs::status_from_pb("status", r.status)?,
                model_type: (!r.model_type.is_empty()).then_some(r.model_type),
                tags: r.tags.into_iter().collect(),
                name_prefix: (!r.name_prefix.is_empty()).then_some(r.name_prefix),
            },
            expression: r.filter,
            order_by: r.order_by,
            page_size: r.page_size,
            page_token: r.page_token,
        };
        let (runs, next_page_token) = self.registry.list_runs(&query).await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.into_iter().map(runs::run_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_run(&self, req: Request<pb::UpdateRunRequest>) -> ApiResult<pb::Run> {
        let named = req.get_ref().run.as_ref().map(|r| r.namespace.clone());
        let (p, ns) = writer(&req, "run.namespace", named.as_deref().unwrap_or_default())?;
        let r = req.into_inner();
        let run = r.run.ok_or_else(|| Error::invalid("run", "is required"))?;
        let id = run_id("run.run_id", &run.run_id)?;
        let patch = runs::patch_from_pb(&run, r.update_mask.as_ref())?;
        let run = self
            .registry
            .update_run(&ns, id, &patch, &p.subject)
            .await?;
        Ok(Response::new(runs::run_to_pb(run)))
    }

    async fn delete_run(&self, req: Request<pb::DeleteRunRequest>) -> ApiResult<()> {
        let (p, ns) = writer(&req, "namespace", &req.get_ref().namespace)?;
        let r = req.get_ref();
        let id = run_id("run_id", &r.run_id)?;
        let etag = (!r.etag.is_empty()).then_some(r.etag.as_str());
        self.registry.delete_run(&ns, id, etag, &p.subject).await?;
        Ok(Response::new(()))
    }

    async fn upload_artifact(
        &self,
        req: Request<Streaming<pb::UploadArtifactRequest>>,
    ) -> ApiResult<pb::UploadArtifactResponse> {
        use pb::upload_artifact_request::Payload;
        let caller = Principal::of(&req)?;
        let mut stream = req.into_inner();
        let header = match stream.message().await? {
            Some(pb::UploadArtifactRequest {
                payload: Some(Payload::Header(h)),
            }) => h,
            _ => {
                return Err(
                    Error::invalid("header", "the first message must carry the header").into(),
                )
            }
        };
        // The namespace is in the first message, so the grant is checked once it arrives.
        let namespace = write_grant(&caller, "header.namespace", &header.namespace)?;
        let chunks = stream.map(|m| match m {
            Ok(pb::UploadArtifactRequest {
                payload: Some(Payload::Chunk(c)),
            }) => Ok(c),
            Ok(_) => Err(Error::invalid(
                "chunk",
                "every message after the header must carry a chunk",
            )),
            Err(s) => Err(Error::Conflict(format!(
                "upload interrupted: {}",
                s.message()
            ))),
        });
        let up = self
            .registry
            .upload_artifact(
                UploadHeader {
                    run_id: header.run_id,
                    name: header.name,
                    namespace,
                    expected_sha256: header.expected_sha256,
                    expected_size: header.expected_size,
                    artifact: header.artifact,
                    media_type: header.media_type,
                },
                Box::pin(chunks),
                &caller.subject,
            )
            .await?;
        Ok(Response::new(pb::UploadArtifactResponse {
            artifact_uri: up.artifact.uri.to_string(),
            sha256: up.artifact.sha256.clone(),
            size_bytes: up.artifact.size_bytes,
            deduplicated: up.deduplicated,
            run: Some(runs::run_to_pb(up.run)),
            artifact: Some(runs::artifact_to_pb(up.name, up.artifact)),
        }))
    }

    type DownloadArtifactStream = BoxStream<pb::DownloadArtifactResponse>;

    async fn download_artifact(
        &self,
        req: Request<pb::DownloadArtifactRequest>,
    ) -> ApiResult<Self::DownloadArtifactStream> {
        use pb::download_artifact_response::Payload;
        let (_, ns) = reader(&req, "namespace", &req.get_ref().namespace)?;
        let id = run_id("run_id", &req.get_ref().run_id)?;
        let name = match req.get_ref().artifact.as_str() {
            "" => MODEL_ARTIFACT.to_string(),
            named => {
                let mut v = Validator::default();
                validate::artifact_name(&mut v, "artifact", named);
                v.finish().map_err(Error::from)?;
                named.to_string()
            }
        };
        let (artifact, chunks) = self.registry.download_artifact(&ns, id, &name).await?;
        let meta = pb::DownloadArtifactResponse {
            payload: Some(Payload::Metadata(pb::ArtifactMetadata {
                run_id: id.to_string(),
                artifact_uri: artifact.uri.to_string(),
                sha256: artifact.sha256,
                size_bytes: artifact.size_bytes,
                artifact: name,
                media_type: artifact.media_type,
            })),
        };
        let body = chunks.map(|c| match c {
            Ok(bytes) => Ok(pb::DownloadArtifactResponse {
                payload: Some(Payload::Chunk(bytes)),
            }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(serve::with_request_id(
            futures::stream::once(async { Ok(meta) })
                .chain(body)
                .boxed(),
        ))))
    }

    async fn set_alias(&self, req: Request<pb::SetAliasRequest>) -> ApiResult<pb::Alias> {
        let (p, namespace) = writer(&req, "namespace", &req.get_ref().namespace)?;
        let r = req.into_inner();
        let alias = self
            .registry
            .set_alias(
                SetAlias {
                    namespace,
                    run_id: run_id("run_id", &r.run_id)?,
                    alias: r.alias,
                    description: r.description,
                    expected_revision: r.expected_revision,
                    reason: r.reason,
                },
                &p.subject,
            )
            .await?;
        Ok(Response::new(aliases::alias_to_pb(alias)))
    }

    async fn get_alias(&self, req: Request<pb::GetAliasRequest>) -> ApiResult<pb::Alias> {
        let (_, ns) = reader(&req, "namespace", &req.get_ref().namespace)?;
        let alias = self.registry.get_alias(&ns, &req.get_ref().alias).await?;
        Ok(Response::new(aliases::alias_to_pb(alias)))
    }

    async fn list_aliases(
        &self,
        req: Request<pb::ListAliasesRequest>,
    ) -> ApiResult<pb::ListAliasesResponse> {
        let (_, ns) = reader(&req, "namespace", &req.get_ref().namespace)?;
        let r = req.get_ref();
        let (aliases, next_page_token) = self
            .registry
            .list_aliases(&ns, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListAliasesResponse {
            aliases: aliases.into_iter().map(aliases::alias_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn delete_alias(&self, req: Request<pb::DeleteAliasRequest>) -> ApiResult<()> {
        let (p, ns) = writer(&req, "namespace", &req.get_ref().namespace)?;
        let r = req.get_ref();
        self.registry
            .delete_alias(&ns, &r.alias, r.expected_revision, &r.reason, &p.subject)
            .await?;
        Ok(Response::new(()))
    }

    async fn list_alias_history(
        &self,
        req: Request<pb::ListAliasHistoryRequest>,
    ) -> ApiResult<pb::ListAliasHistoryResponse> {
        let (_, ns) = reader(&req, "namespace", &req.get_ref().namespace)?;
        let r = req.get_ref();
        let (entries, next_page_token) = self
            .registry
            .alias_history(&ns, &r.alias, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListAliasHistoryResponse {
            entries: entries.into_iter().map(aliases::history_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn rollback_alias(&self, req: Request<pb::RollbackAliasRequest>) -> ApiResult<pb::Alias> {
        let (p, ns) = writer(&req, "namespace", &req.get_ref().namespace)?;
        let r = req.get_ref();
        let alias = self
            .registry
            .rollback_alias(
                &ns,
                &r.alias,
                r.to_revision,
                r.expected_revision,
                &r.reason,
                &p.subject,
            )
            .await?;
        Ok(Response::new(aliases::alias_to_pb(alias)))
    }

    async fn promote_run(
        &self,
        req: Request<pb::PromoteRunRequest>,
    ) -> ApiResult<pb::PromoteRunResponse> {
        let (p, namespace) = writer(&req, "namespace", &req.get_ref().namespace)?;
        let r = req.into_inner();
        let out = self
            .registry
            .promote_run(
                PromoteRun {
                    namespace,
                    run_id: run_id("run_id", &r.run_id)?,
                    alias: r.alias,
                    metric: r.metric,
                    higher_is_better: r.higher_is_better,
                    force: r.force,
                    dry_run: r.dry_run,
                    reason: r.reason,
                    expected_revision: r.expected_revision,
                },
                &p.subject,
            )
            .await?;
        Ok(Response::new(pb::PromoteRunResponse {
            alias: Some(aliases::alias_to_pb(out.alias)),
            promoted: out.promoted,
            previous_run_id: out
                .previous_run_id
                .map(|u| u.to_string())
                .unwrap_or_default(),
            challenger_value: out.decision.challenger_value,
            incumbent_value: out.decision.incumbent_value,
            decision: out.decision.explanation,
        }))
    }

    type WatchAliasesStream = BoxStream<pb::WatchAliasesResponse>;

    async fn watch_aliases(
        &self,
        req: Request<pb::WatchAliasesRequest>,
    ) -> ApiResult<Self::WatchAliasesStream> {
        let (_, ns) = reader(&req, "namespace", &req.get_ref().namespace)?;
        let rx = self
            .registry
            .watch_aliases(ns, req.into_inner().aliases, self.shutdown.clone())
            .await?;
        let stream =
            ReceiverStream::new(rx).map(|e| e.map(aliases::event_to_pb).map_err(Status::from));
        Ok(Response::new(Box::pin(serve::with_request_id(stream))))
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> ApiResult<pb::ListNamespacesResponse> {
        let p = Principal::of(&req)?;
        let r = req.get_ref();
        let readable = p.readable_namespaces();
        let (namespaces, next_page_token) = self
            .registry
            .list_namespaces(readable.as_deref(), r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: namespaces
                .into_iter()
                .map(|n| pb::Namespace {
                    name: n.name,
                    creator: n.creator,
                    create_time: runs::timestamp(n.create_time),
                })
                .collect(),
            next_page_token,
        }))
    }
}
