//! Aliases over real gRPC: compare-and-swap under contention, reads that never trail
//! acknowledged writes, the cache across replicas, watches, promotion and rollback.

use std::time::Duration;

use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing::TestDb};
use futures::StreamExt;
use tonic::Code;

use crate::support::{servable_run, set, start, start_with};

capstan_server::test_on_both_backends!(
    watch_streams_snapshot_then_every_change,
    promote_rollback_and_history,
);

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    reads_never_trail_acknowledged_writes,
);

/// Reads of a hot alias are shared under load (on Postgres) or cached (on SQLite, one
/// writer); either way no read may return a revision older than one a client saw
/// acknowledged before it asked. On Postgres the reads go to a second replica; a shared
/// read joined after it had begun (or a cache missing a change) would break this.
async fn reads_never_trail_acknowledged_writes(db: TestDb) {
    use std::sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    };
    {
        let postgres = db.is_postgres();
        let server = start(db).await;
        let replica = if postgres {
            Some(server.replica().await)
        } else {
            None
        };
        let read_url = replica
            .as_ref()
            .map_or(server.url.clone(), |r| r.url.clone());
        let mut admin = server.client(Role::Admin).await;
        let a = servable_run(&mut admin, "a", &[]).await;
        let b = servable_run(&mut admin, "b", &[]).await;
        let first = admin
            .set_alias(set("fresh", &a.run_id, None))
            .await
            .unwrap();
        let acked = Arc::new(AtomicI64::new(first.get_ref().revision));
        let done = Arc::new(AtomicBool::new(false));

        let token = server.token(Role::Service, "reader");
        let mut readers = Vec::new();
        for _ in 0..16 {
            let mut c = capstan_client::registry_client(&read_url, Some(&token), 1 << 20)
                .await
                .unwrap();
            let (acked, done) = (acked.clone(), done.clone());
            readers.push(tokio::spawn(async move {
                let mut reads = 0u64;
                while !done.load(Ordering::Acquire) {
                    let floor = acked.load(Ordering::Acquire);
                    let got = c
                        .get_alias(pb::GetAliasRequest {
                            alias: "fresh".into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(
                        got.revision >= floor,
                        "read revision {} after revision {floor} was acknowledged",
                        got.revision
                    );
                    reads += 1;
                }
                reads
            }));
        }
        for i in 0..300 {
            let run = if i % 2 == 0 { &b.run_id } else { &a.run_id };
            let r = admin.set_alias(set("fresh", run, None)).await.unwrap();
            acked.fetch_max(r.get_ref().revision, Ordering::AcqRel);
        }
        done.store(true, Ordering::Release);
        let mut reads = 0;
        for r in readers {
            reads += r.await.unwrap();
        }
        assert!(reads >= 16, "the readers ran ({reads} reads)");
        assert_eq!(acked.load(Ordering::Acquire), 301);
        if let Some(r) = replica {
            r.stop().await;
        }
        server.stop().await;
    }
}

async fn watch_streams_snapshot_then_every_change(db: TestDb) {
    let server = start(db).await;
    let mut c = server.client(Role::Admin).await;
    let a = servable_run(&mut c, "a", &[]).await;
    let b = servable_run(&mut c, "b", &[]).await;
    c.set_alias(set("live", &a.run_id, None)).await.unwrap();
    let mut watcher = server.client(Role::User).await;
    let mut stream = watcher
        .watch_aliases(pb::WatchAliasesRequest {
            aliases: vec!["live".into(), "later".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let snap = next_event(&mut stream).await;
    assert_eq!(snap.r#type, pb::AliasEventType::Snapshot as i32);
    assert_eq!(snap.alias.unwrap().run_id, a.run_id);
    for i in 0..5 {
        let target = if i % 2 == 0 { &b.run_id } else { &a.run_id };
        c.set_alias(set("live", target, None)).await.unwrap();
    }
    c.set_alias(set("later", &b.run_id, Some(0))).await.unwrap();
    c.delete_alias(pb::DeleteAliasRequest {
        alias: "live".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut live_revs = Vec::new();
    let mut saw_later = false;
    let mut saw_delete = false;
    while !(saw_delete && saw_later && live_revs.len() == 5) {
        let ev = next_event(&mut stream).await;
        let alias = ev.alias.unwrap();
        match (
            alias.alias.as_str(),
            pb::AliasEventType::try_from(ev.r#type).unwrap(),
        ) {
            ("live", pb::AliasEventType::Changed) => live_revs.push(alias.revision),
            ("live", pb::AliasEventType::Deleted) => saw_delete = true,
            ("later", pb::AliasEventType::Changed) => saw_later = true,
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(
        live_revs,
        vec![2, 3, 4, 5, 6],
        "every change, in order, once"
    );
    server.stop().await;
}

async fn promote_rollback_and_history(db: TestDb) {
    let server = start(db).await;
    let mut c = server.client(Role::Admin).await;
    let good = servable_run(&mut c, "good", &[("wape", 0.10)]).await;
    let worse = servable_run(&mut c, "worse", &[("wape", 0.30)]).await;
    let better = servable_run(&mut c, "better", &[("wape", 0.05)]).await;
    let promote = |run: &pb::Run, force: bool, dry: bool| pb::PromoteRunRequest {
        alias: "demo-production".into(),
        run_id: run.run_id.clone(),
        metric: "wape".into(),
        higher_is_better: false,
        force,
        dry_run: dry,
        reason: "test".into(),
        expected_revision: None,
        ..Default::default()
    };
    let first = c
        .promote_run(promote(&good, false, false))
        .await
        .unwrap()
        .into_inner();
    assert!(first.promoted);
    let refused = c
        .promote_run(promote(&worse, false, false))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("0.3") && refused.message().contains("0.1"),
        "{}",
        refused.message()
    );
    let dry = c
        .promote_run(promote(&better, false, true))
        .await
        .unwrap()
        .into_inner();
    assert!(!dry.promoted);
    let still = c
        .get_alias(pb::GetAliasRequest {
            alias: "demo-production".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (still.run_id.as_str(), still.revision),
        (good.run_id.as_str(), 1),
        "refusal and dry run change nothing"
    );
    let forced = c
        .promote_run(promote(&worse, true, false))
        .await
        .unwrap()
        .into_inner();
    assert!(forced.promoted);
    assert_eq!(forced.alias.unwrap().revision, 2);
    let back = c
        .rollback_alias(pb::RollbackAliasRequest {
            alias: "demo-production".into(),
            to_revision: 1,
            expected_revision: Some(2),
            reason: "worse run".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (back.run_id.as_str(), back.revision),
        (good.run_id.as_str(), 3)
    );
    let hist = c
        .list_alias_history(pb::ListAliasHistoryRequest {
            alias: "demo-production".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<i32> = hist.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![
            pb::AliasAction::Rollback as i32,
            pb::AliasAction::Promote as i32,
            pb::AliasAction::Promote as i32
        ]
    );
    assert!(hist[1].reason.starts_with("FORCED"), "{}", hist[1].reason);
    assert_eq!(hist[1].actor, "admin-tester");
    server.stop().await;
}

/// `--alias-reads cached` on Postgres: what a replica serves from memory gives way to
/// another replica's change as soon as its announcement arrives, and to a change made
/// while its listener was cut off. Each change must show well before the cache's 2 s
/// TTL, which would otherwise hide a missed announcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_alias_reads_follow_other_replicas_changes() {
    use sqlx::Connection;
    let db = TestDb::postgres().await;
    let cached = ["--alias-reads", "cached"];
    let server = start_with(db, &cached).await;
    let replica = server.replica_with(&cached).await;
    let mut a = server.client(Role::Admin).await;
    let token = server.token(Role::Service, "replica-b-reader");
    let mut b = capstan_client::registry_client(&replica.url, Some(&token), 1 << 20)
        .await
        .unwrap();
    let runs = [
        servable_run(&mut a, "r1", &[]).await.run_id,
        servable_run(&mut a, "r2", &[]).await.run_id,
        servable_run(&mut a, "r3", &[]).await.run_id,
    ];
    let mut pg = sqlx::PgConnection::connect(&server.db.url).await.unwrap();
    let listeners = "SELECT pid FROM pg_stat_activity \
                     WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    // Both replicas listen once started.
    for _ in 0..100 {
        if sqlx::query(listeners)
            .fetch_all(&mut pg)
            .await
            .unwrap()
            .len()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // B serves revision `cached` (from memory, after its first read); A writes `next`:
    // B must show it long before the cached copy would expire.
    async fn b_follows(
        b: &mut capstan_client::RegistryClient,
        a: &mut capstan_client::RegistryClient,
        before_write: impl std::future::Future<Output = ()>,
        run: &str,
        next: i64,
    ) {
        let get = pb::GetAliasRequest {
            alias: "hot".into(),
            ..Default::default()
        };
        let cached_at = std::time::Instant::now();
        assert_eq!(
            b.get_alias(get.clone()).await.unwrap().get_ref().revision,
            next - 1
        );
        before_write.await;
        a.set_alias(set("hot", run, None)).await.unwrap();
        loop {
            let got = b.get_alias(get.clone()).await.unwrap().into_inner();
            if got.revision == next {
                assert_eq!(got.run_id, run);
                break;
            }
            assert!(
                cached_at.elapsed() < Duration::from_millis(1500),
                "replica B still serves revision {} after revision {next} was written",
                got.revision
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    a.set_alias(set("hot", &runs[0], None)).await.unwrap();
    b_follows(&mut b, &mut a, async {}, &runs[1], 2).await;

    // Cut both listeners off, then write at once: the announcement goes to nobody.
    let cut = async {
        let killed = sqlx::query(&format!(
            "SELECT pg_terminate_backend(pid) FROM ({listeners}) l"
        ))
        .fetch_all(&mut pg)
        .await
        .unwrap();
        assert_eq!(killed.len(), 2, "both replicas were listening");
    };
    b_follows(&mut b, &mut a, cut, &runs[2], 3).await;

    // Both listen again, and B follows announcements again.
    let mut back = 0;
    for _ in 0..250 {
        back = sqlx::query(listeners)
            .fetch_all(&mut pg)
            .await
            .unwrap()
            .len();
        if back == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(back, 2, "both replicas listen again");
    b_follows(&mut b, &mut a, async {}, &runs[0], 4).await;

    replica.stop().await;
    server.stop().await;
}

async fn next_event(
    s: &mut tonic::Streaming<pb::WatchAliasesResponse>,
) -> pb::WatchAliasesResponse {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("event in time")
        .unwrap()
        .unwrap()
}
