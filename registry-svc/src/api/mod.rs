//! The gRPC layer: authorization, request mapping, status codes. Thin by design: every
//! rule lives in `domain`.

mod aliases;
mod runs;
mod status;

use std::{pin::Pin, sync::Arc};

use capstan_proto::registry::v1::{self as pb, registry_service_server::RegistryService};
use capstan_server::{
    auth::{Principal, Role},
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
        runs::{ListRuns, NewRun, RunFilter},
        validate,
    },
    error::{Error, Validator},
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

/// Writes need the admin or service role; users may read.
#[allow(clippy::result_large_err)]
fn writer<T>(req: &Request<T>) -> Result<Principal, Status> {
    let p = Principal::of(req)?;
    match p.role {
        Role::Admin | Role::Service => Ok(p),
        Role::User => Err(Status::permission_denied(
            "writing to the registry needs the admin or service role",
        )),
    }
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
        writer(&req)?;
        let new = NewRun::try_from(req.into_inner())?;
        let run = self.registry.create_run(new).await?;
        Ok(Response::new(runs::run_to_pb(run)))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> ApiResult<pb::Run> {
        Principal::of(&req)?;
        let run = self
            .registry
            .get_run(run_id("run_id", &req.get_ref().run_id)?)
            .await?;
        Ok(Response::new(runs::run_to_pb(run)))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> ApiResult<pb::ListRunsResponse> {
        Principal::of(&req)?;
        let r = req.into_inner();
        let query = ListRuns {
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
        writer(&req)?;
        let r = req.into_inner();
        let run = r.run.ok_or_else(|| Error::invalid("run", "is required"))?;
        let id = run_id("run.run_id", &run.run_id)?;
        let patch = runs::patch_from_pb(&run, r.update_mask.as_ref())?;
        let run = self.registry.update_run(id, &patch).await?;
        Ok(Response::new(runs::run_to_pb(run)))
    }

    async fn upload_artifact(
        &self,
        req: Request<Streaming<pb::UploadArtifactRequest>>,
    ) -> ApiResult<pb::UploadArtifactResponse> {
        writer(&req)?;
        use pb::upload_artifact_request::Payload;
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
                    namespace: header.namespace,
                    expected_sha256: header.expected_sha256,
                    expected_size: header.expected_size,
                },
                Box::pin(chunks),
            )
            .await?;
        Ok(Response::new(pb::UploadArtifactResponse {
            artifact_uri: up.artifact.uri.to_string(),
            sha256: up.artifact.sha256,
            size_bytes: up.artifact.size_bytes,
            deduplicated: up.deduplicated,
            run: Some(runs::run_to_pb(up.run)),
        }))
    }

    type DownloadArtifactStream = BoxStream<pb::DownloadArtifactResponse>;

    async fn download_artifact(
        &self,
        req: Request<pb::DownloadArtifactRequest>,
    ) -> ApiResult<Self::DownloadArtifactStream> {
        Principal::of(&req)?;
        use pb::download_artifact_response::Payload;
        let id = run_id("run_id", &req.get_ref().run_id)?;
        let (artifact, chunks) = self.registry.download_artifact(id).await?;
        let meta = pb::DownloadArtifactResponse {
            payload: Some(Payload::Metadata(pb::ArtifactMetadata {
                run_id: id.to_string(),
                artifact_uri: artifact.uri.to_string(),
                sha256: artifact.sha256,
                size_bytes: artifact.size_bytes,
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
        let p = writer(&req)?;
        let r = req.into_inner();
        let alias = self
            .registry
            .set_alias(
                SetAlias {
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
        Principal::of(&req)?;
        let alias = self.registry.get_alias(&req.get_ref().alias).await?;
        Ok(Response::new(aliases::alias_to_pb(alias)))
    }

    async fn list_aliases(
        &self,
        req: Request<pb::ListAliasesRequest>,
    ) -> ApiResult<pb::ListAliasesResponse> {
        Principal::of(&req)?;
        let r = req.get_ref();
        let (aliases, next_page_token) = self
            .registry
            .list_aliases(r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListAliasesResponse {
            aliases: aliases.into_iter().map(aliases::alias_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn delete_alias(&self, req: Request<pb::DeleteAliasRequest>) -> ApiResult<()> {
        let p = writer(&req)?;
        let r = req.get_ref();
        self.registry
            .delete_alias(&r.alias, r.expected_revision, &r.reason, &p.subject)
            .await?;
        Ok(Response::new(()))
    }

    async fn list_alias_history(
        &self,
        req: Request<pb::ListAliasHistoryRequest>,
    ) -> ApiResult<pb::ListAliasHistoryResponse> {
        Principal::of(&req)?;
        let r = req.get_ref();
        let (entries, next_page_token) = self
            .registry
            .alias_history(&r.alias, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListAliasHistoryResponse {
            entries: entries.into_iter().map(aliases::history_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn rollback_alias(&self, req: Request<pb::RollbackAliasRequest>) -> ApiResult<pb::Alias> {
        let p = writer(&req)?;
        let r = req.get_ref();
        let alias = self
            .registry
            .rollback_alias(
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
        let p = writer(&req)?;
        let r = req.into_inner();
        let out = self
            .registry
            .promote_run(
                PromoteRun {
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
        Principal::of(&req)?;
        let rx = self
            .registry
            .watch_aliases(req.into_inner().aliases, self.shutdown.clone())
            .await?;
        let stream =
            ReceiverStream::new(rx).map(|e| e.map(aliases::event_to_pb).map_err(Status::from));
        Ok(Response::new(Box::pin(serve::with_request_id(stream))))
    }
}
