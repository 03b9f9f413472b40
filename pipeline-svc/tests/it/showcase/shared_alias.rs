//! Demos sharing an alias take turns: eight `showcase_rich` demos started together on one
//! alias all succeed (through two QUEUED replicas on Postgres, one DIRECT server on
//! SQLite), the alias ends on a recorded champion, and its history holds each demo's
//! swaps together, never interleaved. Demos of two aliases run side by side.

use std::collections::HashMap;

use capstan_proto::{pipeline::v1 as pb, registry::v1 as rpb};
use capstan_server::auth::Role;

use crate::common::{server::options, stack::*, *};

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    eight_demos_on_one_alias_take_turns,
    demos_of_two_aliases_run_side_by_side,
);

fn demo_on(alias: &str, i: usize) -> pb::StartDemoRequest {
    pb::StartDemoRequest {
        request_id: format!("{alias}-{i}"),
        alias: alias.into(),
        series_count: 4,
        days: 120,
        horizon: 7,
        ..demo_request("showcase_rich")
    }
}

/// Starts every request at once (spread over `urls`), then follows each to its end.
async fn run_together(
    urls: &[String],
    token: &str,
    requests: Vec<pb::StartDemoRequest>,
) -> Vec<pb::Operation> {
    let starts = requests.into_iter().enumerate().map(|(i, r)| {
        let url = urls[i % urls.len()].clone();
        async move {
            pipeline_client(&url, token)
                .await
                .start_demo(r)
                .await
                .expect("StartDemo")
                .into_inner()
        }
    });
    let started = futures::future::join_all(starts).await;
    let mut done = Vec::new();
    for op in started {
        let mut ops = operations_client(&urls[0], token).await;
        let mut stream = ops
            .watch_operation(pb::WatchOperationRequest {
                operation_id: op.operation_id.clone(),
                after_sequence: 0,
            })
            .await
            .expect("WatchOperation")
            .into_inner();
        let events = until_finished(&mut stream, &op.operation_id).await;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.sequence, i as i64 + 1, "gapless: {events:#?}");
        }
        let op = ops
            .get_operation(pb::GetOperationRequest {
                operation_id: op.operation_id,
            })
            .await
            .expect("GetOperation")
            .into_inner();
        done.push(op);
    }
    done
}

async fn history(registry_url: &str, alias: &str) -> Vec<rpb::AliasHistoryEntry> {
    let mut r = registry_client(registry_url).await;
    let mut entries = r
        .list_alias_history(rpb::ListAliasHistoryRequest {
            alias: alias.into(),
            page_size: 1000,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("ListAliasHistory")
        .into_inner()
        .entries;
    entries.reverse();
    entries
}

async fn eight_demos_on_one_alias_take_turns(db: TestDb) {
    let queued = db.is_postgres();
    let mode = |a: &mut pipeline_svc::app::PipelineArgs| {
        a.direct_execution = !queued;
    };
    let stack = Stack::start(&db, mode, Vec::new()).await;
    let mut urls = vec![stack.pipeline_url.clone()];
    // On Postgres a second replica shares the database and takes its share of the queue.
    let mut second = None;
    if queued {
        let mut args = stack.args.clone();
        args.replica_id = Some("second".into());
        let running = pipeline_svc::app::start(&args, options())
            .await
            .expect("second replica");
        urls.push(format!("http://{}", running.addr));
        second = Some(running);
    }
    let alice = token("alice", Role::User);
    let alias = "shared-production";
    let ops = run_together(&urls, &alice, (0..8).map(|i| demo_on(alias, i)).collect()).await;

    // Which demo made each registry run.
    let mut demo_of: HashMap<String, usize> = HashMap::new();
    let mut champions = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(
            op.status,
            pb::OperationStatus::Succeeded as i32,
            "demo {i}: {op:#?}"
        );
        let d = demo_result(op);
        for c in &d.candidates {
            demo_of.insert(c.run_id.clone(), i);
        }
        demo_of.insert(d.challenger_run_id.clone(), i);
        champions.push(d.winning_run_id.clone());
    }
    let mut r = registry_client(&stack.registry_url).await;
    let now = r
        .get_alias(rpb::GetAliasRequest {
            alias: alias.into(),
            ..Default::default()
        })
        .await
        .expect("GetAlias")
        .into_inner();
    assert!(
        champions.contains(&now.run_id),
        "{alias} ends on {} , not a champion",
        now.run_id
    );

    let entries = history(&stack.registry_url, alias).await;
    let owners: Vec<usize> = entries
        .iter()
        .map(|e| {
            *demo_of
                .get(&e.run_id)
                .unwrap_or_else(|| panic!("{e:?} is no demo's run"))
        })
        .collect();
    let mut seen = Vec::new();
    for (i, d) in owners.iter().enumerate() {
        if i == 0 || owners[i - 1] != *d {
            assert!(
                !seen.contains(d),
                "demo {d}'s swaps are interleaved with another's: {owners:?}"
            );
            seen.push(*d);
        }
    }
    assert_eq!(seen.len(), 8, "every demo moved the alias: {owners:?}");
    if let Some(s) = second {
        s.shutdown.cancel();
        let _ = s.task.await;
    }
    stack.stop().await;
}

async fn demos_of_two_aliases_run_side_by_side(db: TestDb) {
    let stack = Stack::start(&db, |_| {}, Vec::new()).await;
    let alice = token("alice", Role::User);
    let urls = vec![stack.pipeline_url.clone()];
    let ops = run_together(&urls, &alice, vec![demo_on("left", 0), demo_on("right", 0)]).await;
    for op in &ops {
        assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    }
    let span = |op: &pb::Operation| {
        let t = |ts: Option<prost_types::Timestamp>| {
            let ts = ts.expect("timestamp");
            ts.seconds as f64 + f64::from(ts.nanos) / 1e9
        };
        (t(op.start_time), t(op.end_time))
    };
    let (a, b) = (span(&ops[0]), span(&ops[1]));
    assert!(
        a.0 < b.1 && b.0 < a.1,
        "the two aliases' demos did not overlap: {a:?} {b:?}"
    );
    stack.stop().await;
}
