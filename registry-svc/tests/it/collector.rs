//! The blob collector racing uploads of the same bytes and deletions of other runs sharing
//! them, on the filesystem store and on the S3 store (moto), on both databases: no blob a
//! run refers to is ever removed, and every unreferenced one is gone after the grace period.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use capstan_server::testing::TestDb;
use futures::StreamExt;
use registry_svc::{
    app::AliasReads,
    domain::{
        artifacts::UploadHeader,
        ports::BlobStore,
        registry::Registry,
        runs::{NewRun, RunStatus},
    },
    error::Error,
    store::{
        blobs::{FsBlobStore, ObjectBlobStore},
        sql::SqlStore,
    },
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    collector_races_uploads_and_deletions_on_the_filesystem,
    collector_races_uploads_and_deletions_on_s3,
);

async fn collector_races_uploads_and_deletions_on_the_filesystem(db: TestDb) {
    let blobs = FsBlobStore::open(&db.data_dir().join("artifacts"))
        .await
        .unwrap();
    race(db, Arc::new(blobs)).await;
}

async fn collector_races_uploads_and_deletions_on_s3(db: TestDb) {
    let moto = crate::moto::Moto::start().await;
    let blobs = ObjectBlobStore::s3_with("s3://capstan/registry", moto.settings()).unwrap();
    race(db, Arc::new(blobs)).await;
}

fn content(seed: &str) -> Vec<u8> {
    seed.as_bytes().repeat(40_000)
}

fn sha(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// A RUNNING run with `content` as its model.
pub async fn run_with(registry: &Registry, name: &str, content: &[u8]) -> Uuid {
    let run = registry
        .create_run(
            NewRun {
                namespace: "default".into(),
                name: name.into(),
                model_type: "m".into(),
                status: Some(RunStatus::Running),
                ..Default::default()
            },
            "tester",
        )
        .await
        .unwrap();
    let chunks: Vec<Result<Bytes, Error>> = content
        .chunks(64 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    registry
        .upload_artifact(
            UploadHeader {
                run_id: run.id.to_string(),
                name: "m.bin".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            futures::stream::iter(chunks),
            "tester",
        )
        .await
        .unwrap();
    run.id
}

/// The run's model downloads whole, with the hash of `content`.
async fn downloads(registry: &Registry, id: Uuid, content: &[u8]) {
    let (artifact, mut stream) = registry
        .download_artifact("default", id, "model")
        .await
        .unwrap();
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk.unwrap_or_else(|e| panic!("run {id}'s blob: {e}")));
    }
    assert_eq!(hex::encode(hasher.finalize()), sha(content));
    assert_eq!(artifact.sha256, sha(content));
}

async fn stored(blobs: &dyn BlobStore) -> Vec<String> {
    blobs
        .list(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.sha256)
        .collect()
}

async fn race(db: TestDb, blobs: Arc<dyn BlobStore>) {
    let registry = Registry::new(
        Arc::new(SqlStore::connect(&db.url).await.unwrap()),
        blobs.clone(),
        AliasReads::Fresh,
    );
    let (shared, lone, kept) = (content("shared"), content("lone"), content("kept"));
    let mut old = Vec::new();
    for i in 0..4 {
        old.push(run_with(&registry, &format!("old-{i}"), &shared).await);
    }
    let lonely = run_with(&registry, "lonely", &lone).await;
    let keeper = run_with(&registry, "keeper", &kept).await;

    // The collector passes again and again, with no grace period, while the old runs
    // sharing the bytes are deleted and purged and new runs upload the same bytes.
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU64::new(0));
    let collector = {
        let (registry, stop, passes) = (registry.clone(), stop.clone(), passes.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let pass = registry.collect_blobs("test", Duration::ZERO).await;
                assert!(
                    pass.unwrap().is_some(),
                    "the only collector holds the lease"
                );
                passes.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let deleter = {
        let registry = registry.clone();
        tokio::spawn(async move {
            for id in old {
                registry
                    .delete_run("default", id, None, "tester")
                    .await
                    .unwrap();
                registry.purge_deleted_runs(Duration::ZERO).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let uploaders: Vec<_> = (0..6)
        .map(|u| {
            let (registry, shared) = (registry.clone(), shared.clone());
            tokio::spawn(async move {
                let mut last = None;
                for j in 0..6 {
                    let id = run_with(&registry, &format!("new-{u}-{j}"), &shared).await;
                    // Whatever the collector did meanwhile, the blob is there.
                    downloads(&registry, id, &shared).await;
                    // And this run goes too, so that the bytes are often referenced by
                    // none but uploads in flight.
                    if let Some(previous) = last.replace(id) {
                        registry
                            .delete_run("default", previous, None, "tester")
                            .await
                            .unwrap();
                        registry.purge_deleted_runs(Duration::ZERO).await.unwrap();
                    }
                }
                last
            })
        })
        .collect();
    let mut new = Vec::new();
    for u in futures::future::join_all(uploaders).await {
        new.extend(u.unwrap());
        // Each uploader keeps its last run.
    }
    deleter.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    collector.await.unwrap();
    assert!(passes.load(Ordering::Relaxed) > 1, "the collector raced");

    registry
        .collect_blobs("test", Duration::ZERO)
        .await
        .unwrap();
    for id in &new {
        downloads(&registry, *id, &shared).await;
    }
    downloads(&registry, keeper, &kept).await;
    downloads(&registry, lonely, &lone).await;

    // An unreferenced blob stays within the grace period and is gone after it.
    registry
        .delete_run("default", lonely, None, "tester")
        .await
        .unwrap();
    registry.purge_deleted_runs(Duration::ZERO).await.unwrap();
    let hour = Duration::from_secs(3600);
    assert_eq!(registry.collect_blobs("test", hour).await.unwrap(), Some(0));
    assert!(
        stored(&*blobs).await.contains(&sha(&lone)),
        "young blobs stay"
    );
    assert_eq!(
        registry
            .collect_blobs("test", Duration::ZERO)
            .await
            .unwrap(),
        Some(1)
    );
    let mut want = vec![sha(&shared), sha(&kept)];
    want.sort();
    assert_eq!(
        stored(&*blobs).await,
        want,
        "only what runs refer to is left"
    );

    // One replica at a time: another holder waits for the lease to expire.
    assert_eq!(
        registry
            .collect_blobs("another replica", Duration::ZERO)
            .await
            .unwrap(),
        None
    );
}
