//! The registry over real gRPC on a real socket, on SQLite and Postgres.

mod support;

use std::{collections::HashSet, time::Duration};

use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use support::{servable_run, start, start_with};
use tonic::Code;

fn set(alias: &str, run_id: &str, expected: Option<i64>) -> pb::SetAliasRequest {
    pb::SetAliasRequest {
        alias: alias.into(),
        run_id: run_id.into(),
        expected_revision: expected,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_guarded_swaps_lose_no_update() {
    for db in testing::all_backends("concurrent_guarded_swaps_lose_no_update").await {
        let backend = if db.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        };
        let server = start(db).await;
        let mut admin = server.client(Role::Admin).await;
        let a = servable_run(&mut admin, "a", &[]).await;
        let b = servable_run(&mut admin, "b", &[]).await;
        admin
            .set_alias(set("hot", &a.run_id, Some(0)))
            .await
            .unwrap();

        const CLIENTS: usize = 32;
        const SWAPS: usize = 200;
        let mut tasks = Vec::new();
        for i in 0..CLIENTS {
            let mut c = server.client(Role::Service).await;
            let runs = [a.run_id.clone(), b.run_id.clone()];
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut aborted) = (0usize, 0usize);
                for j in 0..SWAPS {
                    let cur = c
                        .get_alias(pb::GetAliasRequest {
                            alias: "hot".into(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let target = &runs[(i + j) % 2];
                    match c.set_alias(set("hot", target, Some(cur.revision))).await {
                        Ok(r) => {
                            assert_eq!(r.get_ref().revision, cur.revision + 1);
                            ok += 1
                        }
                        Err(s) if s.code() == Code::Aborted => aborted += 1,
                        Err(s) => panic!("unexpected status {s:?}"),
                    }
                }
                (ok, aborted)
            }));
        }
        let mut successes = 0;
        for t in tasks {
            let (ok, aborted) = t.await.unwrap();
            assert_eq!(ok + aborted, SWAPS);
            successes += ok;
        }
        let alias = admin
            .get_alias(pb::GetAliasRequest {
                alias: "hot".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            alias.revision as usize,
            successes + 1,
            "{backend}: every success is one revision"
        );

        let mut history = Vec::new();
        let mut token = String::new();
        loop {
            let page = admin
                .list_alias_history(pb::ListAliasHistoryRequest {
                    alias: "hot".into(),
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            history.extend(page.entries);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(
            history.len(),
            successes + 1,
            "{backend}: history holds exactly the successful swaps"
        );
        history.reverse();
        for (i, e) in history.iter().enumerate() {
            assert_eq!(
                e.revision as usize,
                i + 1,
                "{backend}: revisions are gapless"
            );
            if i > 0 {
                assert_eq!(
                    e.previous_run_id,
                    history[i - 1].run_id,
                    "{backend}: each swap saw the one before it"
                );
            }
        }
        eprintln!(
            "{backend}: {successes} of {} guarded swaps succeeded; the rest were ABORTED",
            CLIENTS * SWAPS
        );
        assert!(successes > 0);
        server.stop().await;
    }
}

/// Reads of a hot alias are shared under load (on Postgres) or cached (on SQLite, one
/// writer); either way no read may return a revision older than one a client saw
/// acknowledged before it asked. On Postgres the reads go to a second replica; a shared
/// read joined after it had begun (or a cache missing a change) would break this.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_never_trail_acknowledged_writes() {
    use std::sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    };
    for db in testing::all_backends("reads_never_trail_acknowledged_writes").await {
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
            let mut c = capstan_server::client::registry_client(&read_url, Some(&token), 1 << 20)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_hash_dedupe_and_round_trip() {
    for db in testing::all_backends("artifacts_hash_dedupe_and_round_trip").await {
        let server = start(db).await;
        let mut c = server.client(Role::Service).await;
        let content: Vec<u8> = (0..(3 << 20) + 17)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let sha = hex::encode(Sha256::digest(&content));
        let mut ids = Vec::new();
        for name in ["first", "second"] {
            let run = c
                .create_run(pb::CreateRunRequest {
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
                namespace: "demo/team-a".into(),
                expected_sha256: sha.clone(),
                expected_size: Some(content.len() as i64),
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
                format!("demo/team-a/exp_smoothing-model_{sha}.bin")
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
                run_id: ids[1].clone(),
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
                Some(pb::download_artifact_response::Payload::Chunk(b)) => {
                    got.extend_from_slice(&b)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(hex::encode(Sha256::digest(&got)), sha);
        server.stop().await;
    }
}

/// `--alias-reads cached` on Postgres: what a replica serves from memory gives way to
/// another replica's change as soon as its announcement arrives, and to a change made
/// while its listener was cut off. Each change must show well before the cache's 2 s
/// TTL, which would otherwise hide a missed announcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_alias_reads_follow_other_replicas_changes() {
    use sqlx::Connection;
    let test = "cached_alias_reads_follow_other_replicas_changes";
    let Some(db) = testing::postgres(test).await else {
        return;
    };
    let cached = ["--alias-reads", "cached"];
    let server = start_with(db, &cached).await;
    let replica = server.replica_with(&cached).await;
    let mut a = server.client(Role::Admin).await;
    let token = server.token(Role::Service, "replica-b-reader");
    let mut b = capstan_server::client::registry_client(&replica.url, Some(&token), 1 << 20)
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
        b: &mut capstan_server::client::RegistryClient,
        a: &mut capstan_server::client::RegistryClient,
        before_write: impl std::future::Future<Output = ()>,
        run: &str,
        next: i64,
    ) {
        let get = pb::GetAliasRequest {
            alias: "hot".into(),
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

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_snapshot_then_every_change() {
    for db in testing::all_backends("watch_streams_snapshot_then_every_change").await {
        let server = start(db).await;
        let mut c = server.client(Role::Admin).await;
        let a = servable_run(&mut c, "a", &[]).await;
        let b = servable_run(&mut c, "b", &[]).await;
        c.set_alias(set("live", &a.run_id, None)).await.unwrap();
        let mut watcher = server.client(Role::User).await;
        let mut stream = watcher
            .watch_aliases(pb::WatchAliasesRequest {
                aliases: vec!["live".into(), "later".into()],
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_reaper_fails_silent_runs_only() {
    let server = start(testing::sqlite()).await;
    let mut c = server.client(Role::Service).await;
    let mk = |name: &str| pb::CreateRunRequest {
        name: name.into(),
        model_type: "m".into(),
        status: pb::RunStatus::Running as i32,
        heartbeat_timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    };
    let silent = c.create_run(mk("silent")).await.unwrap().into_inner();
    let alive = c.create_run(mk("alive")).await.unwrap().into_inner();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.update_run(pb::UpdateRunRequest {
            run: Some(pb::Run {
                run_id: alive.run_id.clone(),
                metrics: [("loss".to_string(), 0.5)].into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    }
    let silent = c
        .get_run(pb::GetRunRequest {
            run_id: silent.run_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(silent.status, pb::RunStatus::Failed as i32);
    assert!(
        silent.status_message.contains("heartbeat"),
        "{}",
        silent.status_message
    );
    let alive = c
        .get_run(pb::GetRunRequest {
            run_id: alive.run_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alive.status, pb::RunStatus::Running as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_runs_filters_orders_and_pages() {
    for db in testing::all_backends("list_runs_filters_orders_and_pages").await {
        let server = start(db).await;
        let mut c = server.client(Role::Admin).await;
        for i in 0..25 {
            c.create_run(pb::CreateRunRequest {
                name: format!("{}-{i:02}", if i % 2 == 0 { "even" } else { "Odd" }),
                model_type: if i % 3 == 0 { "a".into() } else { "b".into() },
                tags: [(
                    "team".to_string(),
                    if i < 10 {
                        "x".to_string()
                    } else {
                        "y".to_string()
                    },
                )]
                .into(),
                metrics: if i % 5 == 4 {
                    Default::default()
                } else {
                    [("wape".to_string(), ((i * 7) % 25) as f64 / 100.0)].into()
                },
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let page_all = |req: pb::ListRunsRequest| {
            let mut c = c.clone();
            async move {
                let mut out = Vec::new();
                let mut req = req;
                loop {
                    let resp = c.list_runs(req.clone()).await.unwrap().into_inner();
                    assert!(resp.runs.len() <= req.page_size.max(1) as usize);
                    out.extend(resp.runs);
                    if resp.next_page_token.is_empty() {
                        return out;
                    }
                    req.page_token = resp.next_page_token;
                }
            }
        };
        let all = page_all(pb::ListRunsRequest {
            page_size: 4,
            ..Default::default()
        })
        .await;
        assert_eq!(all.len(), 25);
        assert_eq!(
            all.iter().map(|r| &r.run_id).collect::<HashSet<_>>().len(),
            25,
            "no duplicates across pages"
        );
        let evens = page_all(pb::ListRunsRequest {
            page_size: 3,
            name_prefix: "even".into(),
            ..Default::default()
        })
        .await;
        assert_eq!(evens.len(), 13);
        let odd_lower = page_all(pb::ListRunsRequest {
            page_size: 3,
            name_prefix: "odd".into(),
            ..Default::default()
        })
        .await;
        assert!(
            odd_lower.is_empty(),
            "name prefix is case-sensitive on every backend"
        );
        let team_y_a = page_all(pb::ListRunsRequest {
            page_size: 2,
            model_type: "a".into(),
            tags: [("team".to_string(), "y".to_string())].into(),
            ..Default::default()
        })
        .await;
        assert_eq!(team_y_a.len(), (10..25).filter(|i| i % 3 == 0).count());
        let by_wape = page_all(pb::ListRunsRequest {
            page_size: 3,
            order_by: "metrics.wape".into(),
            ..Default::default()
        })
        .await;
        assert_eq!(
            by_wape.len(),
            20,
            "ordering by a metric lists runs that have it"
        );
        let values: Vec<f64> = by_wape.iter().map(|r| r.metrics["wape"]).collect();
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "ascending: {values:?}"
        );
        let desc = page_all(pb::ListRunsRequest {
            page_size: 7,
            order_by: "metrics.wape desc".into(),
            ..Default::default()
        })
        .await;
        let dv: Vec<f64> = desc.iter().map(|r| r.metrics["wape"]).collect();
        assert!(dv.windows(2).all(|w| w[0] >= w[1]), "descending: {dv:?}");
        server.stop().await;
    }
}

/// The tag and metric index rows are derived by the database from the run's JSON (SQLite
/// `json_each`, Postgres `jsonb_each_text`): metric values must come back bit-exact
/// (paging compares them with the run's own values), and an update must re-derive them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_indexes_follow_tags_and_metrics_exactly() {
    for db in testing::all_backends("run_indexes_follow_tags_and_metrics_exactly").await {
        let server = start(db).await;
        let mut c = server.client(Role::Admin).await;
        // Awkward doubles: random bit patterns (subnormals, huge and tiny exponents), and
        // values whose shortest decimal form needs 17 digits.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut values = vec![0.1 + 0.2, 5e-324, f64::MAX, -f64::MIN_POSITIVE, 1.0 / 3.0];
        while values.len() < 60 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_finite() {
                values.push(v);
            }
        }
        let mut ids = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let run = c
                .create_run(pb::CreateRunRequest {
                    name: format!("exact-{i}"),
                    model_type: "a".into(),
                    metrics: [("m".to_string(), *v)].into(),
                    tags: [("team".to_string(), "old".to_string())].into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            ids.push(run.run_id);
        }
        // Retag and re-measure the first ten through UpdateRun.
        for id in &ids[..10] {
            c.update_run(pb::UpdateRunRequest {
                run: Some(pb::Run {
                    run_id: id.clone(),
                    tags: [("team".to_string(), "new".to_string())].into(),
                    metrics: [("n".to_string(), 1.5)].into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["tags".into(), "metrics".into()],
                }),
            })
            .await
            .unwrap();
        }
        // Clear the first three (their index rows go); only rename the next one (a write
        // that leaves tags and metrics alone keeps its index rows).
        for (i, id) in ids[..4].iter().enumerate() {
            let paths = if i < 3 {
                vec!["tags".into(), "metrics".into()]
            } else {
                vec!["name".into()]
            };
            c.update_run(pb::UpdateRunRequest {
                run: Some(pb::Run {
                    run_id: id.clone(),
                    name: format!("renamed-{i}"),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            })
            .await
            .unwrap();
        }
        let list = |req: pb::ListRunsRequest| {
            let mut c = c.clone();
            async move {
                let (mut out, mut req) = (Vec::new(), req);
                loop {
                    let resp = c.list_runs(req.clone()).await.unwrap().into_inner();
                    out.extend(resp.runs);
                    if resp.next_page_token.is_empty() {
                        return out;
                    }
                    req.page_token = resp.next_page_token;
                }
            }
        };
        let by_tag = |team: &str| pb::ListRunsRequest {
            page_size: 100,
            tags: [("team".to_string(), team.to_string())].into(),
            ..Default::default()
        };
        assert_eq!(list(by_tag("new")).await.len(), 7);
        assert_eq!(list(by_tag("old")).await.len(), values.len() - 10);
        let by_n = list(pb::ListRunsRequest {
            page_size: 100,
            order_by: "metrics.n".into(),
            ..Default::default()
        })
        .await;
        assert_eq!(
            by_n.len(),
            7,
            "the replaced metric is indexed, the cleared ones not"
        );

        let mut expected: Vec<f64> = values[10..].to_vec();
        expected.sort_by(f64::total_cmp);
        let by_m = list(pb::ListRunsRequest {
            page_size: 3,
            order_by: "metrics.m".into(),
            ..Default::default()
        })
        .await;
        let got: Vec<f64> = by_m.iter().map(|r| r.metrics["m"]).collect();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "paged in order, each run once, values bit-exact"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_run_is_idempotent_under_concurrency() {
    for db in testing::all_backends("create_run_is_idempotent_under_concurrency").await {
        let server = start(db).await;
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let mut c = server.client(Role::Service).await;
            tasks.push(tokio::spawn(async move {
                c.create_run(pb::CreateRunRequest {
                    request_id: "req-42".into(),
                    name: "once".into(),
                    model_type: "m".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .run_id
            }));
        }
        let mut ids = HashSet::new();
        for t in tasks {
            ids.insert(t.await.unwrap());
        }
        assert_eq!(ids.len(), 1, "one run for one request_id");
        let mut c = server.client(Role::Admin).await;
        let listed = c
            .list_runs(pb::ListRunsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .runs;
        assert_eq!(listed.len(), 1);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_rollback_and_history() {
    for db in testing::all_backends("promote_rollback_and_history").await {
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
}

/// A replica starts an UpdateRun from the run as it last wrote it; another replica's later
/// change must neither be lost nor make a valid request fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_through_other_replicas_are_never_lost() {
    for db in testing::all_backends("updates_through_other_replicas_are_never_lost").await {
        let server = start(db).await;
        let replica = server.replica().await;
        let mut a = server.client(Role::Admin).await;
        let token = server.token(Role::Admin, "replica-b");
        let mut b = capstan_server::client::registry_client(&replica.url, Some(&token), 1 << 20)
            .await
            .unwrap();
        let run = a
            .create_run(pb::CreateRunRequest {
                name: "shared".into(),
                model_type: "seasonal_naive".into(),
                status: pb::RunStatus::Running as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let patch = |etag: &str, tags: &[(&str, &str)], metric: Option<f64>, path: &str| {
            pb::UpdateRunRequest {
                run: Some(pb::Run {
                    run_id: run.run_id.clone(),
                    etag: etag.into(),
                    tags: tags
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    metrics: metric
                        .map(|m| ("wape".to_string(), m))
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![path.into()],
                }),
            }
        };
        // B changes the run after A wrote it: A's copy is stale.
        let via_b = b
            .update_run(patch("", &[("by", "b")], None, "tags"))
            .await
            .unwrap()
            .into_inner();
        // Conditional on B's etag: judged against A's stale copy it would be refused.
        let via_a = a
            .update_run(patch(&via_b.etag, &[], Some(0.25), "metrics"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(via_a.tags.get("by").map(String::as_str), Some("b"));
        assert_eq!(via_a.metrics.get("wape"), Some(&0.25));
        // Again the other way round, unconditionally: B's tag change survives A's write.
        b.update_run(patch("", &[("by", "b2")], None, "tags"))
            .await
            .unwrap();
        let last = a
            .update_run(patch("", &[], Some(0.5), "metrics"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(last.tags.get("by").map(String::as_str), Some("b2"));
        // A stale etag is still refused, by either replica.
        let stale = a
            .update_run(patch(&via_b.etag, &[], Some(0.75), "metrics"))
            .await
            .unwrap_err();
        assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
        let read = b
            .get_run(pb::GetRunRequest {
                run_id: run.run_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.etag, last.etag);
        assert_eq!(read.metrics.get("wape"), Some(&0.5));
        assert_eq!(read.tags.get("by").map(String::as_str), Some("b2"));
        replica.stop().await;
    }
}
