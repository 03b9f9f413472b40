//! Coalesced alias reads on a real store: concurrent readers of one alias share a read.

use std::{sync::Arc, time::Duration};

use capstan_server::testing::TestDb;
use registry_svc::{
    domain::{
        aliases::{AliasAction, AliasWrite, CoalescedAliasReads},
        ports::RegistryStore,
        runs::NewRun,
    },
    store::sql::SqlStore,
};
use uuid::Uuid;

/// Hundreds of concurrent readers, a third of them cancelled at once (some while they
/// lead a read): every reader that stays gets the alias, and none is left hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_reads_answer_everyone_despite_cancellations() {
    let db = TestDb::sqlite();
    let store: Arc<dyn RegistryStore> = Arc::new(SqlStore::connect(&db.url).await.unwrap());
    let run = NewRun {
        namespace: "default".into(),
        name: "r".into(),
        model_type: "m".into(),
        ..Default::default()
    }
    .into_run(Uuid::new_v4(), 1, "tester");
    store.insert_run(&run).await.unwrap();
    store
        .write_alias(&AliasWrite {
            namespace: "default".into(),
            alias: "hot".into(),
            run_id: Some(run.id),
            description: String::new(),
            expected_revision: None,
            action: AliasAction::Set,
            reason: String::new(),
            actor: "t".into(),
            time: 1,
        })
        .await
        .unwrap();

    let reads = CoalescedAliasReads::new(store);
    let mut kept = Vec::new();
    for round in 0..20u64 {
        for i in 0..30u64 {
            let reads = reads.clone();
            if i % 3 == 0 {
                // Gives up after a few µs: often while leading a read.
                let patience = Duration::from_micros((round * 7 + i) % 60);
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(patience, reads.get("default", "hot", "default/hot"))
                            .await;
                });
            } else {
                kept.push(tokio::spawn(async move {
                    reads.get("default", "hot", "default/hot").await
                }));
            }
        }
        tokio::task::yield_now().await;
    }
    for task in kept {
        let got = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("a reader was left hanging")
            .unwrap()
            .unwrap()
            .expect("the alias exists");
        assert_eq!((got.run_id, got.revision), (run.id, 1));
    }
    // The last flight releases the slot right after its final answers.
    let mut busy = usize::MAX;
    for _ in 0..100 {
        busy = reads.busy_aliases();
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(busy, 0, "the slot is released once nobody waits");
}
