//! Runs over real gRPC: listing, indexes, idempotent creation, updates across replicas,
//! and the heartbeat reaper.

use std::{collections::HashSet, time::Duration};

use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing::TestDb};
use tonic::Code;

use crate::support::start;

capstan_server::test_on_both_backends!(
    list_runs_filters_orders_and_pages,
    run_indexes_follow_tags_and_metrics_exactly,
    create_run_is_idempotent_under_concurrency,
    updates_through_other_replicas_are_never_lost,
);

async fn list_runs_filters_orders_and_pages(db: TestDb) {
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

/// The tag and metric index rows are derived by the database from the run's JSON (SQLite
/// `json_each`, Postgres `jsonb_each_text`): metric values must come back bit-exact
/// (paging compares them with the run's own values), and an update must re-derive them.
async fn run_indexes_follow_tags_and_metrics_exactly(db: TestDb) {
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

async fn create_run_is_idempotent_under_concurrency(db: TestDb) {
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

/// A replica starts an UpdateRun from the run as it last wrote it; another replica's later
/// change must neither be lost nor make a valid request fail.
async fn updates_through_other_replicas_are_never_lost(db: TestDb) {
    let server = start(db).await;
    let replica = server.replica().await;
    let mut a = server.client(Role::Admin).await;
    let token = server.token(Role::Admin, "replica-b");
    let mut b = capstan_client::registry_client(&replica.url, Some(&token), 1 << 20)
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
    let patch =
        |etag: &str, tags: &[(&str, &str)], metric: Option<f64>, path: &str| pb::UpdateRunRequest {
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
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.etag, last.etag);
    assert_eq!(read.metrics.get("wape"), Some(&0.5));
    assert_eq!(read.tags.get("by").map(String::as_str), Some("b2"));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_reaper_fails_silent_runs_only() {
    let server = start(TestDb::sqlite()).await;
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
            ..Default::default()
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
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alive.status, pb::RunStatus::Running as i32);
    server.stop().await;
}
