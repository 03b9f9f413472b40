//! The contract of [`BlobStore`]: what every implementation does, run on the filesystem
//! store and on the S3 store (against a real local S3 server, moto).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use registry_svc::{
    domain::ports::BlobStore,
    error::{Error, Missing},
    store::blobs::{FsBlobStore, ObjectBlobStore},
};
use sha2::{Digest, Sha256};

use crate::{moto::Moto, support::walk};

/// Runs each case on both stores, as `case::filesystem` and `case::s3`.
macro_rules! blob_store_contract {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn filesystem() {
                super::$case(super::Blobs::filesystem().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                super::$case(super::Blobs::s3().await).await
            }
        }
    )+};
}

blob_store_contract!(
    committed_content_reads_back_exactly_in_bounded_chunks,
    identical_content_is_stored_once,
    an_abandoned_upload_leaves_nothing,
    unknown_blobs_are_not_found,
    concurrent_uploads_of_one_content_keep_one_blob,
    blobs_list_in_hash_order_by_page_and_delete,
);

/// A blob store under test, and a look at what it holds.
pub struct Blobs {
    pub store: Arc<dyn BlobStore>,
    place: Place,
}

enum Place {
    Dir(tempfile::TempDir),
    Bucket(Moto),
}

const PREFIX: &str = "registry";

impl Blobs {
    pub async fn filesystem() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FsBlobStore::open(dir.path()).await.expect("open the store");
        Self {
            store: Arc::new(store),
            place: Place::Dir(dir),
        }
    }

    pub async fn s3() -> Self {
        let moto = Moto::start().await;
        let url = format!("s3://{}/{PREFIX}", crate::moto::BUCKET);
        let store = ObjectBlobStore::s3_with(&url, moto.settings()).expect("configure the store");
        Self {
            store: Arc::new(store),
            place: Place::Bucket(moto),
        }
    }

    /// Committed blobs, and everything else the store holds (staged content, open
    /// uploads).
    pub fn contents(&self) -> (usize, Vec<String>) {
        let all: Vec<String> = match &self.place {
            Place::Dir(dir) => walk(dir.path())
                .into_iter()
                .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
                .collect(),
            Place::Bucket(moto) => moto.contents(),
        };
        let blobs = match &self.place {
            Place::Dir(_) => "blobs/sha256/".to_string(),
            Place::Bucket(_) => format!("{PREFIX}/blobs/sha256/"),
        };
        let (kept, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|k| k.starts_with(&blobs));
        (kept.len(), rest)
    }

    /// Waits (a few seconds at most) for what an abandoned upload left to be cleaned up:
    /// the S3 store aborts multipart uploads in the background.
    pub async fn leftovers(&self) -> Vec<String> {
        let mut rest = self.contents().1;
        for _ in 0..50 {
            if rest.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            rest = self.contents().1;
        }
        rest
    }
}

fn content(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn sha(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// Stages `content` in chunks of awkward sizes and commits it; `true` when deduplicated.
async fn upload(store: &dyn BlobStore, content: &[u8]) -> bool {
    let mut staged = store.stage().await.expect("stage");
    let sizes = [1, 4093, (1 << 20) + 5, 3 << 20, 7];
    let (mut rest, mut i) = (content, 0);
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        staged
            .write(Bytes::copy_from_slice(&rest[..n]))
            .await
            .expect("write");
        rest = &rest[n..];
        i += 1;
    }
    staged.commit(&sha(content)).await.expect("commit")
}

async fn read_all(store: &dyn BlobStore, sha256: &str, chunk: usize) -> Vec<Bytes> {
    store
        .read(sha256, chunk)
        .await
        .expect("read")
        .try_collect()
        .await
        .expect("read to the end")
}

async fn committed_content_reads_back_exactly_in_bounded_chunks(blobs: Blobs) {
    // Around the filesystem store's alignment (4 KiB) and direct-I/O blocks (4 MiB), and
    // past one S3 multipart part (8 MiB).
    for (i, len) in [
        0,
        1,
        4095,
        4096,
        4 << 20,
        (4 << 20) + 1,
        (8 << 20) + 4096 + 7,
    ]
    .into_iter()
    .enumerate()
    {
        let data = content(len, i as u32);
        assert!(
            !upload(&*blobs.store, &data).await,
            "{len} bytes: new content"
        );
        for chunk in [256 << 10, 1000] {
            let chunks = read_all(&*blobs.store, &sha(&data), chunk).await;
            assert!(
                chunks.iter().all(|c| !c.is_empty() && c.len() <= chunk),
                "{len} bytes read in chunks of at most {chunk}: {:?}",
                chunks.iter().map(Bytes::len).collect::<Vec<_>>()
            );
            assert!(chunks.concat() == data, "{len} bytes read back exactly");
        }
    }
    assert_eq!(
        blobs.leftovers().await,
        Vec::<String>::new(),
        "nothing staged is left"
    );
}

async fn identical_content_is_stored_once(blobs: Blobs) {
    let data = content(100_000, 7);
    assert!(!upload(&*blobs.store, &data).await);
    assert!(
        upload(&*blobs.store, &data).await,
        "the second upload is deduplicated"
    );
    assert!(
        !upload(&*blobs.store, &content(100_000, 8)).await,
        "other content is new"
    );
    assert_eq!(blobs.contents().0, 2, "two contents, two blobs");
    assert_eq!(blobs.leftovers().await, Vec::<String>::new());
}

async fn an_abandoned_upload_leaves_nothing(blobs: Blobs) {
    let data = content(3 << 20, 9);
    {
        let mut staged = blobs.store.stage().await.expect("stage");
        staged
            .write(Bytes::from(data.clone()))
            .await
            .expect("write");
        // Dropped without a commit: the client went away, or the hash did not match.
    }
    assert_eq!(
        blobs.leftovers().await,
        Vec::<String>::new(),
        "the staged upload is gone"
    );
    assert_eq!(blobs.contents().0, 0);
    assert!(matches!(
        blobs.store.read(&sha(&data), 1 << 20).await.map(drop),
        Err(Error::NotFound(Missing::Blob(_)))
    ));
}

async fn unknown_blobs_are_not_found(blobs: Blobs) {
    let unknown = "ab".repeat(32);
    match blobs.store.read(&unknown, 1 << 20).await.map(drop) {
        Err(Error::NotFound(Missing::Blob(s))) => assert_eq!(s, unknown),
        other => panic!("reading an unknown blob: {other:?}"),
    }
    assert!(!blobs.store.describe().is_empty());
}

async fn concurrent_uploads_of_one_content_keep_one_blob(blobs: Blobs) {
    let data = Arc::new(content(2 << 20, 11));
    let uploads: Vec<_> = (0..4)
        .map(|_| {
            let (store, data) = (blobs.store.clone(), data.clone());
            tokio::spawn(async move { upload(&*store, &data).await })
        })
        .collect();
    for u in uploads {
        u.await.expect("every concurrent upload commits");
    }
    assert_eq!(blobs.contents().0, 1, "one content, one blob");
    assert_eq!(blobs.leftovers().await, Vec::<String>::new());
    let back = read_all(&*blobs.store, &sha(&data), 256 << 10).await;
    assert!(back.concat() == *data);
    // A stream dropped half-read leaves the blob intact.
    let mut partial = blobs.store.read(&sha(&data), 1000).await.expect("read");
    partial
        .next()
        .await
        .expect("a first chunk")
        .expect("readable");
    drop(partial);
    assert!(read_all(&*blobs.store, &sha(&data), 1 << 20).await.concat() == *data);
}

async fn blobs_list_in_hash_order_by_page_and_delete(blobs: Blobs) {
    let store = &*blobs.store;
    assert!(store.list(None, 10).await.unwrap().is_empty());
    let before = capstan_server::time::now_micros();
    let mut shas: Vec<String> = Vec::new();
    for seed in 0..5 {
        let c = content(1000 + seed as usize, seed);
        upload(store, &c).await;
        shas.push(sha(&c));
    }
    shas.sort();
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        for b in &page {
            // Clocks of a filesystem and of an S3 server round to the second.
            assert!(
                b.written >= before - 2_000_000,
                "{b:?} written before the test"
            );
        }
        listed.extend(page.iter().map(|b| b.sha256.clone()));
        match page.last() {
            Some(last) => after = Some(last.sha256.clone()),
            None => break,
        }
    }
    assert_eq!(listed, shas, "every blob once, in hash order");
    store.delete(&shas[1]).await.unwrap();
    store.delete(&shas[1]).await.unwrap();
    let left: Vec<String> = store
        .list(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.sha256)
        .collect();
    assert_eq!(
        left,
        [&shas[0], &shas[2], &shas[3], &shas[4]]
            .map(|s| s.clone())
            .to_vec()
    );
    let gone = store.read(&shas[1], 1024).await.err();
    assert!(
        matches!(gone, Some(Error::NotFound(Missing::Blob(_)))),
        "{gone:?}"
    );
}
