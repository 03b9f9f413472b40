//! The capstan-client example binary (`follow_alias`: GetAlias, then WatchAliases) against
//! the real registry-svc binary: what the README's "Use the registry from Rust" shows.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use capstan_client::{pb::registry::v1 as pb, registry_client, RegistryClient};
use capstan_server::auth::{issue_hs256, Role};
use capstan_tests::{binary, Service};

/// `target/<profile>/examples/follow_alias`, built by `cargo test --workspace`.
fn example() -> std::path::PathBuf {
    let registry = binary("registry-svc");
    let path = registry
        .parent()
        .expect("the target directory")
        .join("examples/follow_alias");
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace` (it builds every example) \
         or `cargo build -p capstan-client --example follow_alias` first",
        path.display()
    );
    path
}

/// A SUCCEEDED run with an artifact: what an alias may point at.
async fn servable_run(c: &mut RegistryClient, name: &str) -> String {
    let run = c
        .create_run(pb::CreateRunRequest {
            name: name.into(),
            model_type: "seasonal_naive".into(),
            status: pb::RunStatus::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    use pb::upload_artifact_request::Payload;
    let upload = [
        Payload::Header(pb::ArtifactHeader {
            run_id: run.run_id.clone(),
            name: "model.json".into(),
            ..Default::default()
        }),
        Payload::Chunk(format!("model {name}").into_bytes().into()),
    ]
    .map(|p| pb::UploadArtifactRequest { payload: Some(p) });
    c.upload_artifact(tokio_stream::iter(upload)).await.unwrap();
    c.update_run(pb::UpdateRunRequest {
        run: Some(pb::Run {
            run_id: run.run_id.clone(),
            status: pb::RunStatus::Succeeded as i32,
            ..Default::default()
        }),
        update_mask: None,
    })
    .await
    .unwrap();
    run.run_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_example_reads_and_follows_an_alias() {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("e2e-secret-{}", uuid::Uuid::new_v4());
    let secret_file = dir.path().join("jwt.secret");
    std::fs::write(&secret_file, &secret).unwrap();
    let data_dir = dir.path().join("data");
    let registry = Service::start(
        &binary("registry-svc"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--jwt-secret-file",
            secret_file.to_str().unwrap(),
        ],
        &[],
        dir.path().join("registry.log"),
    )
    .unwrap();
    let token = issue_hs256(secret.as_bytes(), "e2e", Role::Service, 600).unwrap();
    let mut c = registry_client(&registry.url(), Some(&token), 8 << 20)
        .await
        .unwrap();
    let first = servable_run(&mut c, "first").await;
    let second = servable_run(&mut c, "second").await;
    let set = |run: &str| pb::SetAliasRequest {
        alias: "prod".into(),
        run_id: run.into(),
        ..Default::default()
    };
    c.set_alias(set(&first)).await.unwrap();

    // The example as a user runs it: URL, alias, and stop after two events.
    let mut follower = Command::new(example())
        .args([registry.url().as_str(), "prod", "2"])
        .env("CAPSTAN_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a line from the example within 20 s")
    };
    assert_eq!(next(), format!("prod -> run {first} (revision 1)"));
    assert_eq!(
        next(),
        format!("ALIAS_EVENT_TYPE_SNAPSHOT prod -> run {first} (revision 1)")
    );
    c.set_alias(set(&second)).await.unwrap();
    assert_eq!(
        next(),
        format!("ALIAS_EVENT_TYPE_CHANGED prod -> run {second} (revision 2)")
    );
    let out = tokio::task::spawn_blocking(move || follower.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "the example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
