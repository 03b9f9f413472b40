//! The S3-compatible artifact store, through object_store, against a real local S3
//! server (moto): same behaviour as the filesystem store.

mod support;

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use support::start_with;
use tonic::Code;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn objects(endpoint: &str) -> Vec<String> {
    let out = Command::new("python3")
        .args(["-c", &format!(
            "import boto3; c=boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n\
             print('\\n'.join(o['Key'] for o in c.list_objects_v2(Bucket='capstan').get('Contents', [])))\n\
             print('\\n'.join('UPLOAD ' + u['Key'] for u in c.list_multipart_uploads(Bucket='capstan').get('Uploads', [])))"
        )])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_dedupes_verifies_and_leaves_nothing_behind() {
    if !on_path("moto_server") {
        assert!(
            std::env::var("CAPSTAN_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "CAPSTAN_REQUIRE_TOOLS=1 but moto_server is missing (pip install 'moto[server]')"
        );
        eprintln!("\n*** SKIPPED: moto_server is not on PATH (pip install 'moto[server]'); CI requires it. ***\n");
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let made = Command::new("python3")
        .args(["-c", &format!("import boto3; boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='capstan')")])
        .status()
        .unwrap();
    assert!(made.success());
    for (k, v) in [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        // Only this test runs in this binary; object_store reads these at start-up.
        std::env::set_var(k, v);
    }

    let server = start_with(
        testing::sqlite(),
        &["--artifact-store", "s3://capstan/registry"],
    )
    .await;
    let mut c = server.client(Role::Service).await;
    let content: Vec<u8> = (0..(9 << 20))
        .map(|i: u32| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect();
    let sha = hex::encode(Sha256::digest(&content));
    let mut runs = Vec::new();
    for i in 0..3 {
        let run = c
            .create_run(pb::CreateRunRequest {
                name: format!("s3-{i}"),
                model_type: "m".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let expected = if i == 2 { "0".repeat(64) } else { sha.clone() };
        let mut msgs = vec![pb::UploadArtifactRequest {
            payload: Some(pb::upload_artifact_request::Payload::Header(
                pb::ArtifactHeader {
                    run_id: run.run_id.clone(),
                    name: "w.bin".into(),
                    expected_sha256: expected,
                    ..Default::default()
                },
            )),
        }];
        for chunk in content.chunks(1 << 20) {
            msgs.push(pb::UploadArtifactRequest {
                payload: Some(pb::upload_artifact_request::Payload::Chunk(
                    chunk.to_vec().into(),
                )),
            });
        }
        let res = c.upload_artifact(tokio_stream::iter(msgs)).await;
        match i {
            0 => assert!(!res.unwrap().into_inner().deduplicated),
            1 => assert!(res.unwrap().into_inner().deduplicated),
            _ => assert_eq!(res.unwrap_err().code(), Code::DataLoss),
        }
        runs.push(run.run_id);
    }
    // Aborted multipart uploads are cleaned up in the background.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keys = objects(&endpoint);
    assert_eq!(
        keys,
        vec![format!("registry/blobs/sha256/{}/{sha}", &sha[..2])],
        "one blob, no staging, no open uploads"
    );

    let mut stream = c
        .download_artifact(pb::DownloadArtifactRequest {
            run_id: runs[1].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut hasher = Sha256::new();
    let mut n = 0;
    while let Some(msg) = stream.next().await {
        if let Some(pb::download_artifact_response::Payload::Chunk(b)) = msg.unwrap().payload {
            assert!(b.len() <= 512 * 1024, "chunks stay bounded");
            hasher.update(&b);
            n += b.len();
        }
    }
    assert_eq!((n, hex::encode(hasher.finalize())), (content.len(), sha));
    server.stop().await;
}
