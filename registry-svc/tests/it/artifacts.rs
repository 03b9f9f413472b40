//! Artifacts over real gRPC: hashed, deduplicated, streamed back.

use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing::TestDb};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::support::{start, walk};

capstan_server::test_on_both_backends!(artifacts_hash_dedupe_and_round_trip,);

async fn artifacts_hash_dedupe_and_round_trip(db: TestDb) {
    let server = start(db).await;
    // Its grant is on team-a only: the uploads go there.
    let mut c = server
        .granted(Role::Service, "team-a-ci", &[], &["team-a"])
        .await;
    let content: Vec<u8> = (0..(3 << 20) + 17)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sha = hex::encode(Sha256::digest(&content));
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let run = c
            .create_run(pb::CreateRunRequest {
                namespace: "team-a".into(),
                name: name.into(),
                model_type: "exp_smoothing".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let header = pb::ArtifactHeader {
            run_id: run.run_id.clone(),
            name: "weights.BIN".into(),
            namespace: "team-a".into(),
            expected_sha256: sha.clone(),
            expected_size: Some(content.len() as i64),
            ..Default::default()
        };
        let mut msgs = vec![pb::UploadArtifactRequest {
            payload: Some(pb::upload_artifact_request::Payload::Header(header)),
        }];
        for chunk in content.chunks(100_000) {
            msgs.push(pb::UploadArtifactRequest {
                payload: Some(pb::upload_artifact_request::Payload::Chunk(
                    chunk.to_vec().into(),
                )),
            });
        }
        let up = c
            .upload_artifact(tokio_stream::iter(msgs))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(up.sha256, sha);
        assert_eq!(up.size_bytes, content.len() as i64);
        assert_eq!(
            up.artifact_uri,
            format!("team-a/exp_smoothing-model_{sha}.bin")
        );
        assert_eq!(up.deduplicated, name == "second");
        ids.push(run.run_id);
    }
    let blobs: Vec<_> = walk(&server.db.data_dir().join("artifacts/blobs"));
    assert_eq!(blobs.len(), 1, "identical content is stored once");
    assert!(
        walk(&server.db.data_dir().join("artifacts/staging")).is_empty(),
        "no staged leftovers"
    );

    let mut stream = c
        .download_artifact(pb::DownloadArtifactRequest {
            namespace: "team-a".into(),
            run_id: ids[1].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let Some(pb::download_artifact_response::Payload::Metadata(meta)) = first.payload else {
        panic!("metadata first")
    };
    assert_eq!(meta.sha256, sha);
    let mut got = Vec::new();
    while let Some(msg) = stream.next().await {
        match msg.unwrap().payload {
            Some(pb::download_artifact_response::Payload::Chunk(b)) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(hex::encode(Sha256::digest(&got)), sha);
    server.stop().await;
}

/// Uploads through the registry's own rules into a real S3 server: the second copy of a
/// content is deduplicated, one whose hash the header got wrong is refused as data loss
/// and leaves nothing behind, and downloads stream back in bounded chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_uploads_dedupe_verify_and_leave_nothing_behind() {
    use std::sync::Arc;

    use bytes::Bytes;
    use registry_svc::{
        app::AliasReads,
        domain::{
            artifacts::UploadHeader,
            registry::Registry,
            runs::{NewRun, RunStatus},
        },
        error::Error,
        store::{blobs::ObjectBlobStore, sql::SqlStore},
    };

    let moto = crate::moto::Moto::start().await;
    let db = TestDb::sqlite();
    let blobs = ObjectBlobStore::s3_with("s3://capstan/registry", moto.settings()).unwrap();
    let registry = Registry::new(
        Arc::new(SqlStore::connect(&db.url).await.unwrap()),
        Arc::new(blobs),
        AliasReads::Fresh,
    );
    let content: Vec<u8> = (0..(9 << 20))
        .map(|i: u32| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect();
    let sha = hex::encode(Sha256::digest(&content));
    let mut runs = Vec::new();
    for i in 0..3 {
        let run = registry
            .create_run(
                NewRun {
                    namespace: "default".into(),
                    name: format!("s3-{i}"),
                    model_type: "m".into(),
                    status: Some(RunStatus::Running),
                    ..Default::default()
                },
                "tester",
            )
            .await
            .unwrap();
        let chunks: Vec<Result<Bytes, Error>> = content
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let uploaded = registry
            .upload_artifact(
                UploadHeader {
                    run_id: run.id.to_string(),
                    name: "w.bin".into(),
                    namespace: "default".into(),
                    expected_sha256: if i == 2 { "0".repeat(64) } else { sha.clone() },
                    ..Default::default()
                },
                futures::stream::iter(chunks),
                "tester",
            )
            .await;
        match i {
            0 => assert!(!uploaded.unwrap().deduplicated),
            1 => assert!(uploaded.unwrap().deduplicated),
            _ => assert!(matches!(uploaded, Err(Error::DataLoss(_))), "{uploaded:?}"),
        }
        runs.push(run.id);
    }
    // Aborted multipart uploads are cleaned up in the background.
    let mut keys = moto.contents();
    for _ in 0..50 {
        if keys.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        keys = moto.contents();
    }
    assert_eq!(
        keys,
        vec![format!("registry/blobs/sha256/{}/{sha}", &sha[..2])],
        "one blob, no staging, no open uploads"
    );
    let (artifact, mut stream) = registry
        .download_artifact("default", runs[1], "model")
        .await
        .unwrap();
    assert_eq!(artifact.sha256, sha);
    let mut hasher = Sha256::new();
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= 512 * 1024, "chunks stay bounded");
        hasher.update(&chunk);
        n += chunk.len();
    }
    assert_eq!((n, hex::encode(hasher.finalize())), (content.len(), sha));
}

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    three_artifacts_uploaded_concurrently_to_one_run,
);

/// A run holds several named artifacts: three uploads to one run at once (the model, a
/// chart and a report) all attach, each downloads by name with its size and hash, the run
/// lists them, and the model stays what the alias rules serve. An attached name keeps its
/// content; bad names and media types are refused and change nothing.
async fn three_artifacts_uploaded_concurrently_to_one_run(db: TestDb) {
    use crate::support::upload_named;
    use tonic::Code;

    let server = start(db).await;
    let c = server.client(Role::Service).await;
    let run = c
        .clone()
        .create_run(pb::CreateRunRequest {
            name: "several".into(),
            model_type: "exp_smoothing".into(),
            status: pb::RunStatus::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // (artifact name, file name, media type, content); the model names no artifact.
    let pieces: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        (
            "",
            "weights.bin",
            "",
            (0..(2 << 20)).map(|i: u32| (i >> 3) as u8).collect(),
        ),
        (
            "chart",
            "chart.svg",
            "image/svg+xml",
            b"<svg xmlns='http://www.w3.org/2000/svg'/>".repeat(5000),
        ),
        (
            "report",
            "report.json",
            "application/json",
            br#"{"wape": 0.1}"#.repeat(300),
        ),
    ];
    let uploads = pieces.iter().map(|(artifact, file, media, content)| {
        let mut c = c.clone();
        let header = pb::ArtifactHeader {
            run_id: run.run_id.clone(),
            name: (*file).into(),
            artifact: (*artifact).into(),
            media_type: (*media).into(),
            expected_sha256: hex::encode(Sha256::digest(content)),
            ..Default::default()
        };
        let content = content.clone();
        tokio::spawn(async move { upload_named(&mut c, header, content).await })
    });
    for (up, (artifact, ..)) in futures::future::join_all(uploads)
        .await
        .into_iter()
        .zip(&pieces)
    {
        let up = up.unwrap().unwrap();
        let named = up.artifact.unwrap();
        assert_eq!(
            named.name,
            if artifact.is_empty() {
                "model"
            } else {
                artifact
            }
        );
    }

    let got = c
        .clone()
        .get_run(pb::GetRunRequest {
            run_id: run.run_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(String, String, i64, String)> = got
        .artifacts
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                a.sha256.clone(),
                a.size_bytes,
                a.media_type.clone(),
            )
        })
        .collect();
    let want: Vec<(String, String, i64, String)> = ["model", "chart", "report"]
        .into_iter()
        .zip(&pieces)
        .map(|(name, (_, _, media, content))| {
            let sha = hex::encode(Sha256::digest(content));
            (
                name.to_string(),
                sha,
                content.len() as i64,
                media.to_string(),
            )
        })
        .collect();
    // The model first, then the others by name.
    assert_eq!(
        listed,
        vec![want[0].clone(), want[1].clone(), want[2].clone()]
    );
    assert_eq!(
        got.artifact_sha256, want[0].1,
        "the model keeps the compatible fields"
    );
    assert_eq!(
        got.artifact_uri,
        format!("default/exp_smoothing-model_{}.bin", want[0].1)
    );
    assert_eq!(
        got.artifacts[1].uri,
        format!("default/exp_smoothing-model_{}.svg", want[1].1)
    );

    for (name, sha, size, media) in &want {
        // The model also downloads without a name, as today's clients ask.
        for asked in [name.as_str(), if name == "model" { "" } else { name }] {
            let (meta, bytes) = download_named(&mut c.clone(), &run.run_id, asked)
                .await
                .unwrap();
            assert_eq!(
                (
                    &meta.artifact,
                    &meta.sha256,
                    meta.size_bytes,
                    &meta.media_type
                ),
                (name, sha, *size, media)
            );
            assert_eq!(bytes.len() as i64, *size);
            assert_eq!(&hex::encode(Sha256::digest(&bytes)), sha);
        }
    }

    // An attached name keeps its content: the same bytes again are fine, others are not.
    let again = |artifact: &str, media: &str, content: Vec<u8>| {
        let mut c = c.clone();
        let header = pb::ArtifactHeader {
            run_id: run.run_id.clone(),
            name: "chart.svg".into(),
            artifact: artifact.into(),
            media_type: media.into(),
            ..Default::default()
        };
        async move { upload_named(&mut c, header, content).await }
    };
    let same = again("chart", "image/svg+xml", pieces[1].3.clone())
        .await
        .unwrap();
    assert!(same.deduplicated);
    let other = again("chart", "image/svg+xml", b"<svg/>".to_vec())
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
    assert!(other.message().contains("chart"), "{}", other.message());
    for (artifact, media) in [
        ("Chart", ""),
        ("a/b", ""),
        ("-x", ""),
        ("ok", "svg"),
        ("ok", "image/svg+xml; q=1"),
    ] {
        let bad = again(artifact, media, b"x".to_vec()).await.unwrap_err();
        assert_eq!(
            bad.code(),
            Code::InvalidArgument,
            "{artifact:?} {media:?}: {bad:?}"
        );
    }
    let missing = download_named(&mut c.clone(), &run.run_id, "absent")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let bad_name = download_named(&mut c.clone(), &run.run_id, "../x")
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), Code::InvalidArgument, "{bad_name:?}");
    let after = c
        .clone()
        .get_run(pb::GetRunRequest {
            run_id: run.run_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        after.artifacts, got.artifacts,
        "refused uploads changed nothing"
    );
    server.stop().await;
}

/// Downloads the run's artifact `name` (empty: the model): its metadata and content.
async fn download_named(
    c: &mut capstan_client::RegistryClient,
    run_id: &str,
    name: &str,
) -> Result<(pb::ArtifactMetadata, Vec<u8>), tonic::Status> {
    let mut stream = c
        .download_artifact(pb::DownloadArtifactRequest {
            run_id: run_id.into(),
            artifact: name.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut meta = None;
    let mut bytes = Vec::new();
    while let Some(msg) = stream.next().await {
        match msg?.payload {
            Some(pb::download_artifact_response::Payload::Metadata(m)) => meta = Some(m),
            Some(pb::download_artifact_response::Payload::Chunk(b)) => bytes.extend_from_slice(&b),
            None => panic!("an empty download message"),
        }
    }
    Ok((meta.expect("metadata first"), bytes))
}
