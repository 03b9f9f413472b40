//! The contract of [`RegistryStore`]: what every implementation does, run on SQLite and on
//! Postgres. Each trait method, its refusals, and its rules under concurrency.

use std::{collections::HashSet, sync::Arc, time::Duration};

use capstan_proto::artifact_uri::ArtifactUri;
use capstan_server::testing::TestDb;
use futures::StreamExt;
use registry_svc::{
    domain::{
        aliases::{AliasAction, AliasWrite},
        ports::{ChangeHint, RegistryStore, RunDeletion},
        runs::{Artifact, ModelRun, NewRun, RunCursor, RunFilter, RunOrder, RunStatus},
    },
    error::{Error, Missing},
    store::sql::SqlStore,
};
use uuid::Uuid;

capstan_server::test_on_both_backends!(
    ping_answers_and_the_writer_count_is_known,
    inserted_runs_read_back_whole,
    insert_is_idempotent_on_request_id,
    update_run_applies_only_at_the_expected_version,
    concurrent_updates_at_one_version_let_one_win,
    list_runs_filters_on_every_condition,
    list_runs_orders_and_resumes_after_the_cursor,
    fail_expired_runs_fails_only_silent_running_runs,
    alias_writes_follow_compare_and_swap,
    deletion_keeps_history_and_recreation_goes_on_numbering,
    concurrent_writes_at_one_revision_let_one_win,
    unconditional_concurrent_writes_leave_a_gapless_history,
    history_and_changes_page_in_revision_order,
    list_aliases_pages_by_name,
    alias_change_hints_follow_the_backend,
    namespaces_keep_runs_aliases_and_request_ids_apart,
    deleted_runs_leave_reads_at_once_and_purge_takes_their_rows,
    blob_leases_and_removals_exclude_each_other,
);

async fn open(db: &TestDb) -> Arc<dyn RegistryStore> {
    Arc::new(
        SqlStore::connect(&db.url)
            .await
            .unwrap_or_else(|e| panic!("open the store on {}: {e}", db.url)),
    )
}

/// Where the suite's runs and aliases live unless a case says otherwise.
const NS: &str = "default";

fn new_run(name: &str) -> ModelRun {
    NewRun {
        namespace: NS.into(),
        name: name.into(),
        model_type: "seasonal_naive".into(),
        ..Default::default()
    }
    .into_run(Uuid::new_v4(), 1_000, "tester")
}

/// A stored run's id: aliases point at runs that exist.
async fn stored_run(store: &dyn RegistryStore) -> Uuid {
    let run = new_run("target");
    store.insert_run(&run).await.unwrap();
    run.id
}

async fn stored_runs(store: &dyn RegistryStore, n: usize) -> Vec<Uuid> {
    let mut runs = Vec::new();
    for _ in 0..n {
        runs.push(stored_run(store).await);
    }
    runs
}

fn alias_write(alias: &str, run: Option<Uuid>, expected: Option<i64>) -> AliasWrite {
    AliasWrite {
        namespace: NS.into(),
        alias: alias.into(),
        run_id: run,
        description: format!("points at {run:?}"),
        expected_revision: expected,
        action: if run.is_some() {
            AliasAction::Set
        } else {
            AliasAction::Delete
        },
        reason: "contract".into(),
        actor: "tester".into(),
        time: 42,
    }
}

fn is_conflict<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Conflict(_)))
}

async fn ping_answers_and_the_writer_count_is_known(db: TestDb) {
    let store = open(&db).await;
    store.ping().await.unwrap();
    assert_eq!(store.single_writer(), !db.is_postgres());
}

async fn inserted_runs_read_back_whole(db: TestDb) {
    let store = open(&db).await;
    let mut run = new_run("whole");
    run.request_id = Some("req-whole".into());
    run.params = [("lr".to_string(), "0.1".to_string())].into();
    run.tags = [("team".to_string(), "forecasting".to_string())].into();
    // Doubles whose shortest decimal form needs 17 digits, and extremes.
    run.metrics = [
        ("a".to_string(), 0.1 + 0.2),
        ("b".to_string(), 5e-324),
        ("c".to_string(), f64::MAX),
    ]
    .into();
    run.status = RunStatus::Running;
    run.heartbeat_timeout_ms = 30_000;
    let (stored, created) = store.insert_run(&run).await.unwrap();
    assert!(created);
    assert_eq!(stored, run);
    assert_eq!(store.get_run(NS, run.id).await.unwrap(), Some(run.clone()));
    assert_eq!(store.get_run(NS, Uuid::new_v4()).await.unwrap(), None);

    // Without a request id any number of runs may be created.
    for i in 0..3 {
        let (_, created) = store
            .insert_run(&new_run(&format!("anon-{i}")))
            .await
            .unwrap();
        assert!(created, "a run without request id is always new");
    }
}

async fn insert_is_idempotent_on_request_id(db: TestDb) {
    let store = open(&db).await;
    let mut first = new_run("first");
    first.request_id = Some("req-1".into());
    store.insert_run(&first).await.unwrap();
    let mut again = new_run("again");
    again.request_id = Some("req-1".into());
    let (got, created) = store.insert_run(&again).await.unwrap();
    assert!(!created);
    assert_eq!(got, first, "the earlier run comes back, unchanged");
    assert_eq!(store.get_run(NS, again.id).await.unwrap(), None);

    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut run = new_run(&format!("racer-{i}"));
                run.request_id = Some("req-race".into());
                store.insert_run(&run).await.unwrap()
            })
        })
        .collect();
    let (mut ids, mut created) = (HashSet::new(), 0);
    for t in tasks {
        let (run, new) = t.await.unwrap();
        ids.insert(run.id);
        created += usize::from(new);
    }
    assert_eq!(
        (ids.len(), created),
        (1, 1),
        "concurrent inserts of one request id make one run"
    );
}

async fn update_run_applies_only_at_the_expected_version(db: TestDb) {
    let store = open(&db).await;
    let run = new_run("versioned");
    store.insert_run(&run).await.unwrap();
    let mut next = run.clone();
    next.version += 1;
    next.name = "renamed".into();
    next.status = RunStatus::Running;
    next.tags = [("k".to_string(), "v".to_string())].into();
    next.metrics = [("wape".to_string(), 0.25)].into();
    next.artifact = Some(Artifact {
        uri: ArtifactUri::parse(&format!(
            "runs/seasonal_naive-model_{}.json",
            "a".repeat(64)
        ))
        .unwrap(),
        sha256: "a".repeat(64),
        size_bytes: 123,
        media_type: "application/json".into(),
    });
    next.attachments.insert(
        "chart".into(),
        Artifact {
            uri: ArtifactUri::parse(&format!("runs/seasonal_naive-model_{}.svg", "b".repeat(64)))
                .unwrap(),
            sha256: "b".repeat(64),
            size_bytes: 45,
            media_type: "image/svg+xml".into(),
        },
    );
    next.update_time = 2_000;
    next.heartbeat_time = 2_000;
    assert!(store.update_run(&next, run.version).await.unwrap());
    assert_eq!(store.get_run(NS, run.id).await.unwrap(), Some(next.clone()));

    let mut stale = run.clone();
    stale.version += 1;
    stale.name = "stale".into();
    assert!(
        !store.update_run(&stale, run.version).await.unwrap(),
        "a write at an old version is refused"
    );
    assert_eq!(store.get_run(NS, run.id).await.unwrap(), Some(next));
    let ghost = new_run("ghost");
    assert!(!store.update_run(&ghost, 1).await.unwrap());
    assert_eq!(store.get_run(NS, ghost.id).await.unwrap(), None);
}

async fn concurrent_updates_at_one_version_let_one_win(db: TestDb) {
    let store = open(&db).await;
    let run = new_run("contended");
    store.insert_run(&run).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, mut mine) = (store.clone(), run.clone());
            tokio::spawn(async move {
                mine.version += 1;
                mine.tags = [("writer".to_string(), i.to_string())].into();
                let won = store.update_run(&mine, run.version).await.unwrap();
                won.then_some(mine)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        winners.extend(t.await.unwrap());
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins a version");
    assert_eq!(store.get_run(NS, run.id).await.unwrap(), winners.pop());
}

/// Twelve runs: create times in ties of three, two statuses, two model types, two teams,
/// names of two cases, `wape` on two runs in three.
async fn listing_fixture(store: &dyn RegistryStore) -> Vec<ModelRun> {
    let mut runs = Vec::new();
    for i in 0..12i64 {
        let mut run = NewRun {
            namespace: NS.into(),
            name: format!("{}-{i:02}", if i % 2 == 0 { "Alpha" } else { "beta" }),
            model_type: if i % 3 == 0 { "a" } else { "b" }.into(),
            tags: [
                (
                    "team".to_string(),
                    if i < 6 { "x" } else { "y" }.to_string(),
                ),
                ("parity".to_string(), (i % 2).to_string()),
            ]
            .into(),
            metrics: if i % 3 == 2 {
                Default::default()
            } else {
                [("wape".to_string(), ((i * 7) % 5) as f64 / 10.0)].into()
            },
            ..Default::default()
        }
        .into_run(Uuid::new_v4(), (i / 3) * 1_000, "tester");
        run.status = if i % 2 == 0 {
            RunStatus::Running
        } else {
            RunStatus::Pending
        };
        store.insert_run(&run).await.unwrap();
        runs.push(run);
    }
    runs
}

fn ids(runs: &[ModelRun]) -> Vec<Uuid> {
    runs.iter().map(|r| r.id).collect()
}

async fn list_runs_filters_on_every_condition(db: TestDb) {
    let store = open(&db).await;
    let runs = listing_fixture(&*store).await;
    let order = RunOrder::CreateTime { desc: false };
    let matching = |f: &dyn Fn(&ModelRun) -> bool| {
        let mut m: Vec<_> = runs.iter().filter(|r| f(r)).cloned().collect();
        m.sort_by_key(|r| (r.create_time, r.id));
        ids(&m)
    };
    let cases: Vec<(RunFilter, Vec<Uuid>)> = vec![
        (RunFilter::default(), matching(&|_| true)),
        (
            RunFilter {
                status: Some(RunStatus::Running),
                ..Default::default()
            },
            matching(&|r| r.status == RunStatus::Running),
        ),
        (
            RunFilter {
                model_type: Some("a".into()),
                tags: [("team".to_string(), "y".to_string())].into(),
                ..Default::default()
            },
            matching(&|r| r.model_type == "a" && r.tags["team"] == "y"),
        ),
        (
            RunFilter {
                tags: [
                    ("team".to_string(), "x".to_string()),
                    ("parity".to_string(), "1".to_string()),
                ]
                .into(),
                ..Default::default()
            },
            matching(&|r| r.tags["team"] == "x" && r.tags["parity"] == "1"),
        ),
        (
            RunFilter {
                name_prefix: Some("Alpha".into()),
                ..Default::default()
            },
            matching(&|r| r.name.starts_with("Alpha")),
        ),
        (
            // Prefixes are case-sensitive on every backend.
            RunFilter {
                name_prefix: Some("alpha".into()),
                ..Default::default()
            },
            vec![],
        ),
        (
            RunFilter {
                tags: [("team".to_string(), "nobody".to_string())].into(),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (filter, expected) in cases {
        let got = store
            .list_runs(NS, filter.as_filter().as_ref(), &order, None, 100)
            .await
            .unwrap();
        assert_eq!(ids(&got), expected, "{filter:?}");
    }
}

async fn list_runs_orders_and_resumes_after_the_cursor(db: TestDb) {
    let store = open(&db).await;
    let runs = listing_fixture(&*store).await;
    let by_time = |desc: bool| {
        let mut sorted = runs.clone();
        sorted.sort_by_key(|r| (r.create_time, r.id));
        if desc {
            sorted.reverse();
        }
        ids(&sorted)
    };
    let by_wape = |desc: bool| {
        let mut sorted: Vec<_> = runs
            .iter()
            .filter(|r| r.metrics.contains_key("wape"))
            .cloned()
            .collect();
        sorted.sort_by(|a, b| {
            a.metrics["wape"]
                .total_cmp(&b.metrics["wape"])
                .then(a.id.cmp(&b.id))
        });
        if desc {
            sorted.reverse();
        }
        ids(&sorted)
    };
    for desc in [false, true] {
        for (order, expected) in [
            (RunOrder::CreateTime { desc }, by_time(desc)),
            (
                RunOrder::Metric {
                    name: "wape".into(),
                    desc,
                },
                by_wape(desc),
            ),
        ] {
            // Pages of five, each resuming after the last run of the one before.
            let mut paged = Vec::new();
            let mut after: Option<RunCursor> = None;
            loop {
                let page = store
                    .list_runs(NS, None, &order, after.as_ref(), 5)
                    .await
                    .unwrap();
                assert!(page.len() <= 5, "the limit holds");
                let Some(last) = page.last() else { break };
                after = Some(match &order {
                    RunOrder::CreateTime { .. } => RunCursor::CreateTime(last.create_time, last.id),
                    RunOrder::Metric { name, .. } => RunCursor::Metric(last.metrics[name], last.id),
                });
                paged.extend(ids(&page));
            }
            assert_eq!(paged, expected, "{order:?}");
        }
    }
}

async fn fail_expired_runs_fails_only_silent_running_runs(db: TestDb) {
    let store = open(&db).await;
    let now = 100_000_000;
    let make = |name: &str, status: RunStatus, timeout_ms: i64, heartbeat: i64| {
        let mut run = new_run(name);
        run.status = status;
        run.heartbeat_timeout_ms = timeout_ms;
        run.heartbeat_time = heartbeat;
        run
    };
    let silent = make("silent", RunStatus::Running, 1_000, now - 2_000_000);
    let spared = [
        make("alive", RunStatus::Running, 1_000, now - 500_000),
        make("no-timeout", RunStatus::Running, 0, 0),
        make("pending", RunStatus::Pending, 1_000, 0),
        make("done", RunStatus::Succeeded, 1_000, 0),
    ];
    store.insert_run(&silent).await.unwrap();
    for run in &spared {
        store.insert_run(run).await.unwrap();
    }
    assert_eq!(store.fail_expired_runs(now).await.unwrap(), 1);
    let failed = store.get_run(NS, silent.id).await.unwrap().unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(
        failed.status_message.contains("heartbeat"),
        "{}",
        failed.status_message
    );
    assert_eq!(failed.version, silent.version + 1, "the version moves on");
    assert_eq!(failed.update_time, now);
    for run in &spared {
        assert_eq!(store.get_run(NS, run.id).await.unwrap().as_ref(), Some(run));
    }
    assert_eq!(store.fail_expired_runs(now).await.unwrap(), 0, "only once");
}

async fn alias_writes_follow_compare_and_swap(db: TestDb) {
    let store = open(&db).await;
    let (r1, r2) = (stored_run(&*store).await, stored_run(&*store).await);
    let created = store
        .write_alias(&alias_write("prod", Some(r1), Some(0)))
        .await
        .unwrap();
    assert_eq!(
        created,
        alias_write("prod", Some(r1), Some(0)).entry(1, None)
    );
    let alias = store.get_alias(NS, "prod").await.unwrap().unwrap();
    assert_eq!(
        (
            alias.run_id,
            alias.revision,
            alias.updated_by.as_str(),
            alias.update_time
        ),
        (r1, 1, "tester", 42)
    );
    assert!(is_conflict(
        &store
            .write_alias(&alias_write("prod", Some(r2), Some(0)))
            .await
    ));
    assert!(is_conflict(
        &store
            .write_alias(&alias_write("prod", Some(r2), Some(7)))
            .await
    ));
    assert!(
        is_conflict(
            &store
                .write_alias(&alias_write("ghost", Some(r2), Some(3)))
                .await
        ),
        "an expected revision of an absent alias"
    );
    let second = store
        .write_alias(&alias_write("prod", Some(r2), Some(1)))
        .await
        .unwrap();
    assert_eq!((second.revision, second.previous_run_id), (2, Some(r1)));
    let third = store
        .write_alias(&alias_write("prod", Some(r1), None))
        .await
        .unwrap();
    assert_eq!((third.revision, third.previous_run_id), (3, Some(r2)));
    assert!(is_conflict(
        &store
            .write_alias(&alias_write("prod", Some(r2), Some(2)))
            .await
    ));
    let now = store.get_alias(NS, "prod").await.unwrap().unwrap();
    assert_eq!(
        (now.run_id, now.revision),
        (r1, 3),
        "refusals changed nothing"
    );
    assert_eq!(store.get_alias(NS, "ghost").await.unwrap(), None);
    assert_eq!(
        store
            .alias_history(NS, "prod", None, 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

async fn deletion_keeps_history_and_recreation_goes_on_numbering(db: TestDb) {
    let store = open(&db).await;
    let (r1, r2) = (stored_run(&*store).await, stored_run(&*store).await);
    store
        .write_alias(&alias_write("gone", Some(r1), None))
        .await
        .unwrap();
    store
        .write_alias(&alias_write("gone", Some(r2), None))
        .await
        .unwrap();
    assert!(
        is_conflict(&store.write_alias(&alias_write("gone", None, Some(1))).await),
        "a deletion at a stale revision"
    );
    let deleted = store
        .write_alias(&alias_write("gone", None, Some(2)))
        .await
        .unwrap();
    assert_eq!(
        (
            deleted.revision,
            deleted.run_id,
            deleted.previous_run_id,
            deleted.action
        ),
        (3, None, Some(r2), AliasAction::Delete)
    );
    assert_eq!(store.get_alias(NS, "gone").await.unwrap(), None);
    for expected in [None, Some(3)] {
        match store
            .write_alias(&alias_write("gone", None, expected))
            .await
        {
            Err(Error::NotFound(Missing::Alias(a))) => assert_eq!(a, "gone"),
            other => panic!("deleting an absent alias: {other:?}"),
        }
    }
    let history = store.alias_history(NS, "gone", None, 10).await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.revision).collect::<Vec<_>>(),
        vec![3, 2, 1],
        "the history outlives the alias"
    );
    let back = store
        .write_alias(&alias_write("gone", Some(r1), Some(0)))
        .await
        .unwrap();
    assert_eq!(
        back.revision, 4,
        "a re-created alias goes on from its history"
    );
    assert_eq!(
        store.get_alias(NS, "gone").await.unwrap().unwrap().revision,
        4
    );
    assert!(store
        .alias_revisions(NS)
        .await
        .unwrap()
        .contains(&("gone".to_string(), 4)));
}

async fn concurrent_writes_at_one_revision_let_one_win(db: TestDb) {
    let store = open(&db).await;
    store
        .write_alias(&alias_write("hot", Some(stored_run(&*store).await), None))
        .await
        .unwrap();
    let tasks: Vec<_> = stored_runs(&*store, 8)
        .await
        .into_iter()
        .map(|run| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write_alias(&alias_write("hot", Some(run), Some(1)))
                    .await
            })
        })
        .collect();
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(entry) => won.push(entry.revision),
            Err(Error::Conflict(_)) => {}
            Err(e) => panic!("unexpected refusal: {e:?}"),
        }
    }
    assert_eq!(
        won,
        vec![2],
        "exactly one write at revision 1 lands, as revision 2"
    );
}

async fn unconditional_concurrent_writes_leave_a_gapless_history(db: TestDb) {
    let store = open(&db).await;
    let tasks: Vec<_> = stored_runs(&*store, 16)
        .await
        .into_iter()
        .map(|run| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut landed = Vec::new();
                for _ in 0..5 {
                    match store
                        .write_alias(&alias_write("busy", Some(run), None))
                        .await
                    {
                        Ok(entry) => landed.push(entry.revision),
                        // Racing the same change, a store may refuse as a lost race.
                        Err(Error::Conflict(_)) => {}
                        Err(e) => panic!("unexpected refusal: {e:?}"),
                    }
                }
                landed
            })
        })
        .collect();
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.extend(t.await.unwrap());
    }
    revisions.sort();
    let n = revisions.len() as i64;
    assert!(n > 0);
    assert_eq!(
        revisions,
        (1..=n).collect::<Vec<_>>(),
        "one revision per write, no gaps"
    );
    let history = store.alias_history(NS, "busy", None, 1000).await.unwrap();
    assert_eq!(history.len() as i64, n);
    for pair in history.windows(2) {
        assert_eq!(
            pair[1].run_id, pair[0].previous_run_id,
            "each write saw the one before it"
        );
    }
}

async fn history_and_changes_page_in_revision_order(db: TestDb) {
    let store = open(&db).await;
    for _ in 0..5 {
        store
            .write_alias(&alias_write("paged", Some(stored_run(&*store).await), None))
            .await
            .unwrap();
    }
    let revs = |entries: Vec<registry_svc::domain::aliases::AliasHistoryEntry>| {
        entries.iter().map(|e| e.revision).collect::<Vec<_>>()
    };
    assert_eq!(
        revs(store.alias_history(NS, "paged", None, 2).await.unwrap()),
        [5, 4]
    );
    assert_eq!(
        revs(store.alias_history(NS, "paged", Some(4), 2).await.unwrap()),
        [3, 2]
    );
    assert_eq!(
        revs(store.alias_history(NS, "paged", Some(2), 5).await.unwrap()),
        [1]
    );
    assert_eq!(
        revs(store.alias_changes(NS, "paged", 2, 2).await.unwrap()),
        [3, 4]
    );
    assert_eq!(
        revs(store.alias_changes(NS, "paged", 0, 10).await.unwrap()),
        [1, 2, 3, 4, 5]
    );
    assert!(store
        .alias_changes(NS, "paged", 5, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .alias_history(NS, "never", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .alias_changes(NS, "never", 0, 10)
        .await
        .unwrap()
        .is_empty());
    let entry = store
        .alias_changes(NS, "paged", 0, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (
            entry.action,
            entry.reason.as_str(),
            entry.actor.as_str(),
            entry.time
        ),
        (AliasAction::Set, "contract", "tester", 42),
        "entries keep what the write said"
    );
}

async fn list_aliases_pages_by_name(db: TestDb) {
    let store = open(&db).await;
    for name in ["c", "a", "d", "b"] {
        store
            .write_alias(&alias_write(name, Some(stored_run(&*store).await), None))
            .await
            .unwrap();
    }
    store
        .write_alias(&alias_write("d", None, None))
        .await
        .unwrap();
    let names = |aliases: Vec<registry_svc::domain::aliases::Alias>| {
        aliases.into_iter().map(|a| a.alias).collect::<Vec<_>>()
    };
    assert_eq!(
        names(store.list_aliases(NS, None, 2).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        names(store.list_aliases(NS, Some("b"), 2).await.unwrap()),
        ["c"],
        "deleted aliases are not listed"
    );
    let mut revisions = store.alias_revisions(NS).await.unwrap();
    revisions.sort();
    assert_eq!(
        revisions,
        [("a", 1), ("b", 1), ("c", 1), ("d", 2)].map(|(a, r)| (a.to_string(), r)),
        "every alias that ever existed, at its last revision"
    );
}

async fn alias_change_hints_follow_the_backend(db: TestDb) {
    let store = open(&db).await;
    let Some(mut hints) = store.alias_change_hints() else {
        assert!(
            store.single_writer(),
            "only a single writer may go without hints"
        );
        return;
    };
    assert_eq!(next_hint(&mut hints).await, ChangeHint::Listening);
    // A change by another process on the same database is announced.
    let other = open(&db).await;
    other
        .write_alias(&alias_write(
            "announced",
            Some(stored_run(&*other).await),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(next_hint(&mut hints).await, ChangeHint::Changed);
}

async fn next_hint(hints: &mut futures::stream::BoxStream<'static, ChangeHint>) -> ChangeHint {
    tokio::time::timeout(Duration::from_secs(10), hints.next())
        .await
        .expect("a hint within 10 s")
        .expect("hints go on")
}

/// A database that drops every connection (a restart, a failover): each method answers,
/// or says the store is unavailable, never anything else; and all answer again soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_are_unavailable_then_mended() {
    let db = TestDb::postgres().await;
    let store = open(&db).await;
    let run = new_run("survivor");
    store.insert_run(&run).await.unwrap();
    store
        .write_alias(&alias_write("survivor", Some(run.id), None))
        .await
        .unwrap();
    assert!(db.terminate_connections().await > 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let results: Vec<Result<(), Error>> = vec![
            store.ping().await,
            store.get_run(NS, run.id).await.map(drop),
            store
                .list_runs(NS, None, &RunOrder::CreateTime { desc: true }, None, 5)
                .await
                .map(drop),
            store.get_alias(NS, "survivor").await.map(drop),
            store.list_aliases(NS, None, 5).await.map(drop),
            store.alias_history(NS, "survivor", None, 5).await.map(drop),
            store.alias_changes(NS, "survivor", 0, 5).await.map(drop),
            store.alias_revisions(NS).await.map(drop),
            store.fail_expired_runs(0).await.map(drop),
            store.insert_run(&new_run("after")).await.map(drop),
            store
                .write_alias(&alias_write("survivor", Some(run.id), None))
                .await
                .map(drop),
        ];
        for r in &results {
            assert!(
                matches!(r, Ok(()) | Err(Error::Unavailable { .. })),
                "a lost connection must read as unavailable: {r:?}"
            );
        }
        if results.iter().all(Result::is_ok) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store did not recover within 5 s: {results:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A run is found only in its namespace; a namespace's first run creates it (recording its
/// creator); request ids and alias names repeat freely across namespaces.
async fn namespaces_keep_runs_aliases_and_request_ids_apart(db: TestDb) {
    let store = open(&db).await;
    let mut ids = Vec::new();
    for (ns, who) in [("team-a", "alice"), ("team-b", "bob"), ("team-a", "carol")] {
        let mut run = new_run("shared");
        run.namespace = ns.into();
        run.created_by = who.into();
        run.request_id = Some(format!("req-{who}"));
        assert!(store.insert_run(&run).await.unwrap().1);
        ids.push(run.id);
        let mut twin = new_run("twin");
        twin.namespace = ns.into();
        twin.request_id = Some("same-everywhere".into());
        let (kept, _) = store.insert_run(&twin).await.unwrap();
        assert_eq!(kept.namespace, ns);
    }
    assert!(store.get_run("team-a", ids[0]).await.unwrap().is_some());
    assert_eq!(store.get_run("team-b", ids[0]).await.unwrap(), None);
    assert_eq!(store.get_run(NS, ids[1]).await.unwrap(), None);

    let listed = store.list_namespaces(None, None, 10).await.unwrap();
    let names: Vec<(&str, &str)> = listed
        .iter()
        .map(|n| (n.name.as_str(), n.creator.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("default", "system"),
            ("team-a", "alice"),
            ("team-b", "bob")
        ]
    );
    let only = ["team-b".to_string(), "nowhere".to_string()];
    let some = store.list_namespaces(Some(&only), None, 10).await.unwrap();
    assert_eq!(some.len(), 1);
    assert_eq!(some[0].name, "team-b");
    assert!(store
        .list_namespaces(Some(&[]), None, 10)
        .await
        .unwrap()
        .is_empty());
    let after = store
        .list_namespaces(None, Some("default"), 1)
        .await
        .unwrap();
    assert_eq!(after[0].name, "team-a");

    for (ns, run) in [("team-a", ids[0]), ("team-b", ids[1])] {
        let mut w = alias_write("prod", Some(run), Some(0));
        w.namespace = ns.into();
        assert_eq!(store.write_alias(&w).await.unwrap().revision, 1);
    }
    assert_eq!(store.get_alias(NS, "prod").await.unwrap(), None);
    let a = store.get_alias("team-a", "prod").await.unwrap().unwrap();
    let b = store.get_alias("team-b", "prod").await.unwrap().unwrap();
    assert_eq!((a.run_id, a.namespace.as_str()), (ids[0], "team-a"));
    assert_eq!((b.run_id, b.namespace.as_str()), (ids[1], "team-b"));
    let mut gone = alias_write("prod", None, None);
    gone.namespace = "team-b".into();
    store.write_alias(&gone).await.unwrap();
    assert!(store.get_alias("team-a", "prod").await.unwrap().is_some());
    assert_eq!(
        store
            .alias_history("team-a", "prod", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let b_history = store
        .alias_history("team-b", "prod", None, 10)
        .await
        .unwrap();
    assert_eq!(b_history.len(), 2);
    assert!(b_history.iter().all(|e| e.namespace == "team-b"));
    assert_eq!(
        store.alias_revisions("team-b").await.unwrap(),
        vec![("prod".to_string(), 2)]
    );
    assert_eq!(
        store.list_aliases("team-a", None, 10).await.unwrap().len(),
        1
    );
    assert!(store.list_aliases(NS, None, 10).await.unwrap().is_empty());
}

/// Rows of `table` that refer to `run`, read straight from the database.
async fn rows_of(db: &TestDb, table: &str, run: Uuid) -> i64 {
    let pool = capstan_server::db::pool(&db.url, db.backend(), 1, None)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE run_id = $1"))
        .bind(run.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

const RUN_TABLES: [&str; 5] = [
    "runs",
    "run_tags",
    "run_metrics",
    "run_params",
    "run_artifacts",
];

async fn deleted_runs_leave_reads_at_once_and_purge_takes_their_rows(db: TestDb) {
    let store = open(&db).await;
    let full = |name: &str| {
        let mut r = new_run(name);
        r.tags = [("team".to_string(), "a".to_string())].into();
        r.params = [("p".to_string(), "1".to_string())].into();
        r.metrics = [("wape".to_string(), 0.5)].into();
        r
    };
    let kept = full("kept");
    let mut gone = full("gone");
    gone.request_id = Some("once".into());
    store.insert_run(&kept).await.unwrap();
    store.insert_run(&gone).await.unwrap();
    let mut next = gone.clone();
    next.version = 2;
    next.artifact = Some(Artifact {
        uri: ArtifactUri::parse(&format!("{NS}/seasonal_naive-model_{}.bin", "c".repeat(64)))
            .unwrap(),
        sha256: "c".repeat(64),
        size_bytes: 3,
        media_type: String::new(),
    });
    assert!(store.update_run(&next, 1).await.unwrap());
    for table in RUN_TABLES {
        assert!(
            rows_of(&db, table, gone.id).await > 0,
            "{table} holds the run"
        );
    }

    store
        .write_alias(&alias_write("prod", Some(gone.id), None))
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_run(NS, gone.id, None, 5_000, "tester")
            .await
            .unwrap(),
        RunDeletion::Aliased(vec![(NS.to_string(), "prod".to_string())])
    );
    store
        .write_alias(&alias_write("prod", None, None))
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_run(NS, gone.id, Some(1), 5_000, "tester")
            .await
            .unwrap(),
        RunDeletion::Moved(2)
    );
    assert_eq!(
        store
            .delete_run("elsewhere", gone.id, None, 5_000, "tester")
            .await
            .unwrap(),
        RunDeletion::Missing
    );
    assert_eq!(
        store.get_run(NS, gone.id).await.unwrap(),
        Some(next.clone()),
        "refusals change nothing"
    );
    assert_eq!(
        store
            .delete_run(NS, gone.id, Some(2), 5_000, "tester")
            .await
            .unwrap(),
        RunDeletion::Deleted
    );
    assert_eq!(
        store
            .delete_run(NS, gone.id, None, 5_000, "tester")
            .await
            .unwrap(),
        RunDeletion::Missing,
        "deleted once"
    );

    // Gone from every read at once.
    assert_eq!(store.get_run(NS, gone.id).await.unwrap(), None);
    let listed: Vec<Uuid> = store
        .list_runs(NS, None, &RunOrder::CreateTime { desc: true }, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, vec![kept.id]);
    let mut stale = next.clone();
    stale.version = 4;
    assert!(
        !store.update_run(&stale, 3).await.unwrap(),
        "a deleted run takes no update"
    );
    let aimed = store
        .write_alias(&alias_write("prod", Some(gone.id), None))
        .await;
    assert!(
        matches!(aimed, Err(Error::NotFound(Missing::Run(id))) if id == gone.id),
        "{aimed:?}"
    );
    // Its request id is free again.
    let mut again = new_run("again");
    again.request_id = Some("once".into());
    assert!(store.insert_run(&again).await.unwrap().1);

    // Purged only past the grace period's cutoff, with every row that refers to it.
    assert_eq!(store.purge_deleted_runs(5_000, 10).await.unwrap(), 0);
    assert_eq!(
        rows_of(&db, "runs", gone.id).await,
        1,
        "kept until the cutoff passes"
    );
    assert_eq!(store.purge_deleted_runs(5_001, 10).await.unwrap(), 1);
    assert_eq!(store.purge_deleted_runs(5_001, 10).await.unwrap(), 0);
    for table in RUN_TABLES {
        assert_eq!(
            rows_of(&db, table, gone.id).await,
            0,
            "{table} after the purge"
        );
        assert!(
            rows_of(&db, table, kept.id).await > 0 || table == "run_artifacts",
            "{table} keeps other runs"
        );
    }
}

async fn blob_leases_and_removals_exclude_each_other(db: TestDb) {
    let store = open(&db).await;
    let (free, held, used) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
    // A run refers to `used`.
    let mut run = new_run("user");
    store.insert_run(&run).await.unwrap();
    run.version = 2;
    run.artifact = Some(Artifact {
        uri: ArtifactUri::parse(&format!("{NS}/seasonal_naive-model_{used}")).unwrap(),
        sha256: used.clone(),
        size_bytes: 1,
        media_type: String::new(),
    });
    assert!(store.update_run(&run, 1).await.unwrap());
    let lease = Uuid::new_v4();
    assert!(store.lease_blob(lease, &held, 100, 200).await.unwrap());

    assert!(
        !store.begin_blob_removal(&used, 150, 400).await.unwrap(),
        "referenced"
    );
    assert!(
        !store.begin_blob_removal(&held, 150, 400).await.unwrap(),
        "leased"
    );
    assert!(store.begin_blob_removal(&free, 150, 400).await.unwrap());
    assert!(
        !store
            .lease_blob(Uuid::new_v4(), &free, 160, 500)
            .await
            .unwrap(),
        "no lease while the blob is being removed"
    );
    store.end_blob_removal(&free).await.unwrap();
    assert!(store
        .lease_blob(Uuid::new_v4(), &free, 170, 500)
        .await
        .unwrap());
    // A lease or a mark left by a crashed holder expires.
    assert!(
        store.begin_blob_removal(&held, 200, 400).await.unwrap(),
        "expired at 200"
    );
    assert!(store
        .lease_blob(Uuid::new_v4(), &held, 400, 900)
        .await
        .unwrap());
    store.release_blob_lease(lease).await.unwrap();

    // One collector at a time; the holder renews, another takes over once it expired.
    assert!(store.claim_collector("a", 0, 100).await.unwrap());
    assert!(!store.claim_collector("b", 50, 150).await.unwrap());
    assert!(store.claim_collector("a", 60, 160).await.unwrap());
    assert!(!store.claim_collector("b", 120, 220).await.unwrap());
    assert!(store.claim_collector("b", 160, 260).await.unwrap());
}
