//! Registry set-up the benchmarks share: runs an alias may point at, artifact uploads.

use bytes::Bytes;
use capstan_client::RegistryClient;
use capstan_proto::registry::v1 as pb;

/// A SUCCEEDED run with a small artifact: what an alias may point at.
pub async fn servable_run(c: &mut RegistryClient, name: &str) -> anyhow::Result<String> {
    let run = create_running(c, name).await?;
    upload(c, &run, Bytes::from(format!("model of {name}")), 1024, None).await?;
    c.update_run(pb::UpdateRunRequest {
        run: Some(pb::Run {
            run_id: run.clone(),
            status: pb::RunStatus::Succeeded as i32,
            ..Default::default()
        }),
        update_mask: None,
    })
    .await?;
    Ok(run)
}

pub async fn create_running(c: &mut RegistryClient, name: &str) -> anyhow::Result<String> {
    Ok(c.create_run(pb::CreateRunRequest {
        name: name.into(),
        model_type: "seasonal_naive".into(),
        status: pb::RunStatus::Running as i32,
        ..Default::default()
    })
    .await?
    .into_inner()
    .run_id)
}

/// Streams `content` as a header and `chunk`-sized slices (no copies).
pub async fn upload(
    c: &mut RegistryClient,
    run_id: &str,
    content: Bytes,
    chunk: usize,
    sha256: Option<String>,
) -> anyhow::Result<pb::UploadArtifactResponse> {
    use pb::upload_artifact_request::Payload;
    let header = pb::UploadArtifactRequest {
        payload: Some(Payload::Header(pb::ArtifactHeader {
            run_id: run_id.into(),
            name: "model.bin".into(),
            expected_sha256: sha256.unwrap_or_default(),
            expected_size: Some(content.len() as i64),
            ..Default::default()
        })),
    };
    let len = content.len();
    let chunks = (0..len.div_ceil(chunk)).map(move |i| pb::UploadArtifactRequest {
        payload: Some(Payload::Chunk(
            content.slice(i * chunk..len.min((i + 1) * chunk)),
        )),
    });
    let msgs = futures::stream::iter(std::iter::once(header).chain(chunks));
    Ok(c.upload_artifact(msgs).await?.into_inner())
}
