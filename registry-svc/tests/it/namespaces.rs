//! Namespaces over real gRPC: the isolation matrix (team A's, team B's, a read-only and
//! an admin token against every registry RPC in both namespaces, each cell's code checked),
//! snapshots that denied calls leave unchanged, watchers that see only their namespace,
//! and the same alias name swapped concurrently in two namespaces.

use std::{collections::BTreeSet, time::Duration};

use capstan_client::RegistryClient;
use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing::TestDb};
use futures::StreamExt;
use tonic::Code;

use crate::support::{alias_history_in, servable_run_in, start, upload_in, upload_named};

capstan_server::test_on_both_backends!(
    isolation_matrix_every_rpc_every_token,
    request_ids_and_alias_names_are_per_namespace,
);

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    same_alias_in_two_namespaces_swapped_concurrently,
);

const A: &str = "team-a";
const B: &str = "team-b";

/// What a token may do in a namespace.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Access {
    None,
    Read,
    Write,
}

struct Caller {
    name: &'static str,
    client: RegistryClient,
    access: fn(&str) -> Access,
}

/// Everything a namespace holds, as an admin reads it.
#[derive(Debug, PartialEq)]
struct Snapshot {
    runs: Vec<pb::Run>,
    aliases: Vec<pb::Alias>,
    history: Vec<pb::AliasHistoryEntry>,
}

async fn snapshot(admin: &mut RegistryClient, ns: &str) -> Snapshot {
    let mut runs = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_runs(pb::ListRunsRequest {
                namespace: ns.into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let aliases = admin
        .list_aliases(pb::ListAliasesRequest {
            namespace: ns.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .aliases;
    let mut history = Vec::new();
    for a in &aliases {
        history.extend(alias_history_in(admin, ns, &a.alias).await);
    }
    Snapshot {
        runs,
        aliases,
        history,
    }
}

fn code<T>(r: &Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// One cell of the matrix: the RPC's name and the code its call ended with.
macro_rules! cell {
    ($out:ident, $rpc:literal, $call:expr) => {
        $out.push(($rpc, code(&$call.await)))
    };
}

/// The fixtures of one namespace: a servable run (the alias `prod` points at it), a second
/// servable run for promotions, and a RUNNING run that writes may change.
struct Fixture {
    servable: pb::Run,
    challenger: pb::Run,
    scratch: pb::Run,
}

async fn fixture(admin: &mut RegistryClient, ns: &str) -> Fixture {
    let servable = servable_run_in(admin, ns, &format!("{ns}-champion"), &[("wape", 0.2)]).await;
    let challenger =
        servable_run_in(admin, ns, &format!("{ns}-challenger"), &[("wape", 0.1)]).await;
    let scratch = admin
        .create_run(pb::CreateRunRequest {
            namespace: ns.into(),
            name: format!("{ns}-scratch"),
            model_type: "seasonal_naive".into(),
            status: pb::RunStatus::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    upload_named(
        admin,
        pb::ArtifactHeader {
            namespace: ns.into(),
            run_id: scratch.run_id.clone(),
            name: "notes.txt".into(),
            artifact: "notes".into(),
            ..Default::default()
        },
        format!("notes of {ns}").into_bytes(),
    )
    .await
    .unwrap();
    admin
        .set_alias(pb::SetAliasRequest {
            namespace: ns.into(),
            alias: "prod".into(),
            run_id: servable.run_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    Fixture {
        servable,
        challenger,
        scratch,
    }
}

/// Calls every registry RPC as `c` on namespace `ns`, and returns each call's code by
/// RPC name. Writes use an alias of the caller's own (`t-{caller}`), so that allowed
/// calls of different callers do not interfere.
async fn every_rpc(
    c: &mut RegistryClient,
    who: &str,
    ns: &str,
    f: &Fixture,
) -> Vec<(&'static str, Code)> {
    let mut out = Vec::new();
    let own = format!("t-{who}");
    let n = || ns.to_string();

    let create = |name: String| pb::CreateRunRequest {
        namespace: n(),
        name,
        model_type: "seasonal_naive".into(),
        ..Default::default()
    };
    cell!(out, "CreateRun", c.create_run(create(format!("by-{who}"))));
    // What a writer deletes is a run of its own; others try the scratch run.
    let doomed = c
        .create_run(create(format!("doomed-{who}")))
        .await
        .map_or(f.scratch.run_id.clone(), |r| r.into_inner().run_id);
    cell!(
        out,
        "DeleteRun",
        c.delete_run(pb::DeleteRunRequest {
            namespace: n(),
            run_id: doomed,
            ..Default::default()
        })
    );
    cell!(
        out,
        "DeleteRun(aliased)",
        c.delete_run(pb::DeleteRunRequest {
            namespace: n(),
            run_id: f.servable.run_id.clone(),
            ..Default::default()
        })
    );
    cell!(
        out,
        "GetRun",
        c.get_run(pb::GetRunRequest {
            namespace: n(),
            run_id: f.servable.run_id.clone(),
        })
    );
    cell!(
        out,
        "ListRuns",
        c.list_runs(pb::ListRunsRequest {
            namespace: n(),
            ..Default::default()
        })
    );
    cell!(
        out,
        "UpdateRun",
        c.update_run(pb::UpdateRunRequest {
            run: Some(pb::Run {
                namespace: n(),
                run_id: f.scratch.run_id.clone(),
                tags: [("touched-by".to_string(), who.to_string())].into(),
                ..Default::default()
            }),
            update_mask: None,
        })
    );
    out.push((
        "UploadArtifact",
        code(&upload_in(c, ns, &f.scratch.run_id, format!("from {who}").into_bytes()).await),
    ));
    out.push((
        "UploadArtifact(named)",
        code(
            &upload_named(
                c,
                pb::ArtifactHeader {
                    namespace: n(),
                    run_id: f.scratch.run_id.clone(),
                    name: "notes.txt".into(),
                    artifact: format!("notes-{who}"),
                    media_type: "text/plain".into(),
                    ..Default::default()
                },
                format!("notes of {who}").into_bytes(),
            )
            .await,
        ),
    ));
    cell!(
        out,
        "DownloadArtifact",
        download(
            c,
            pb::DownloadArtifactRequest {
                namespace: n(),
                run_id: f.servable.run_id.clone(),
                ..Default::default()
            }
        )
    );
    cell!(
        out,
        "DownloadArtifact(named)",
        download(
            c,
            pb::DownloadArtifactRequest {
                namespace: n(),
                run_id: f.scratch.run_id.clone(),
                artifact: "notes".into(),
            }
        )
    );
    cell!(
        out,
        "SetAlias",
        c.set_alias(pb::SetAliasRequest {
            namespace: n(),
            alias: own.clone(),
            run_id: f.servable.run_id.clone(),
            ..Default::default()
        })
    );
    cell!(
        out,
        "GetAlias",
        c.get_alias(pb::GetAliasRequest {
            namespace: n(),
            alias: "prod".into(),
        })
    );
    cell!(
        out,
        "ListAliases",
        c.list_aliases(pb::ListAliasesRequest {
            namespace: n(),
            ..Default::default()
        })
    );
    cell!(
        out,
        "ListAliasHistory",
        c.list_alias_history(pb::ListAliasHistoryRequest {
            namespace: n(),
            alias: "prod".into(),
            ..Default::default()
        })
    );
    cell!(
        out,
        "PromoteRun",
        c.promote_run(pb::PromoteRunRequest {
            namespace: n(),
            alias: own.clone(),
            run_id: f.challenger.run_id.clone(),
            metric: "wape".into(),
            ..Default::default()
        })
    );
    cell!(
        out,
        "RollbackAlias",
        c.rollback_alias(pb::RollbackAliasRequest {
            namespace: n(),
            alias: own.clone(),
            to_revision: 1,
            ..Default::default()
        })
    );
    cell!(
        out,
        "DeleteAlias",
        c.delete_alias(pb::DeleteAliasRequest {
            namespace: n(),
            alias: own.clone(),
            ..Default::default()
        })
    );
    let watch = match c
        .watch_aliases(pb::WatchAliasesRequest {
            namespace: n(),
            aliases: vec!["prod".into()],
        })
        .await
    {
        Ok(r) => match tokio::time::timeout(Duration::from_secs(10), r.into_inner().next()).await {
            Ok(Some(Ok(e))) => {
                assert_eq!(e.alias.unwrap().namespace, ns, "{who}: a snapshot of {ns}");
                Ok(())
            }
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => panic!("{who}: the watch of {ns} ended without an event"),
            Err(_) => panic!("{who}: no snapshot of {ns} within 10 s"),
        },
        Err(e) => Err(e),
    };
    out.push(("WatchAliases", code(&watch)));
    out
}

/// Reads the whole download: a failure may come after the metadata.
async fn download(
    c: &mut RegistryClient,
    req: pb::DownloadArtifactRequest,
) -> Result<(), tonic::Status> {
    let mut s = c.download_artifact(req).await?.into_inner();
    while let Some(m) = s.next().await {
        m?;
    }
    Ok(())
}

const READS: [&str; 8] = [
    "GetRun",
    "ListRuns",
    "DownloadArtifact",
    "DownloadArtifact(named)",
    "GetAlias",
    "ListAliases",
    "ListAliasHistory",
    "WatchAliases",
];

fn expected(rpc: &str, access: Access) -> Code {
    let read = READS.contains(&rpc);
    match (read, access) {
        // `prod` points at the run.
        (false, Access::Write) if rpc == "DeleteRun(aliased)" => Code::FailedPrecondition,
        (true, Access::Read | Access::Write) | (false, Access::Write) => Code::Ok,
        (true, Access::None) => Code::NotFound,
        (false, _) => Code::PermissionDenied,
    }
}

async fn isolation_matrix_every_rpc_every_token(db: TestDb) {
    let backend = format!("{:?}", db.backend());
    let server = start(db).await;
    let mut admin = server.client(Role::Admin).await;
    let fa = fixture(&mut admin, A).await;
    let fb = fixture(&mut admin, B).await;
    let b_runs: BTreeSet<String> = [&fb.servable, &fb.challenger, &fb.scratch]
        .iter()
        .map(|r| r.run_id.clone())
        .collect();

    // A watcher of every alias of A, from before the first call of the matrix.
    let mut watcher = server
        .granted(Role::User, "a-watcher", &[A], &[])
        .await
        .watch_aliases(pb::WatchAliasesRequest {
            namespace: A.into(),
            aliases: vec![],
        })
        .await
        .unwrap()
        .into_inner();

    let mut callers = vec![
        Caller {
            name: "team-a",
            client: server.granted(Role::Service, "team-a-ci", &[], &[A]).await,
            access: |ns| if ns == A { Access::Write } else { Access::None },
        },
        Caller {
            name: "team-b",
            client: server.granted(Role::Service, "team-b-ci", &[], &[B]).await,
            access: |ns| if ns == B { Access::Write } else { Access::None },
        },
        Caller {
            name: "reader",
            client: server.granted(Role::User, "a-reader", &[A], &[]).await,
            access: |ns| if ns == A { Access::Read } else { Access::None },
        },
        Caller {
            name: "admin",
            client: server.client(Role::Admin).await,
            access: |_| Access::Write,
        },
    ];

    for caller in &mut callers {
        let before = [snapshot(&mut admin, A).await, snapshot(&mut admin, B).await];
        for (ns, f) in [(A, &fa), (B, &fb)] {
            let access = (caller.access)(ns);
            for (rpc, got) in every_rpc(&mut caller.client, caller.name, ns, f).await {
                assert_eq!(
                    got,
                    expected(rpc, access),
                    "{backend}: {} calling {rpc} on {ns} ({access:?})",
                    caller.name
                );
            }
        }
        let after = [snapshot(&mut admin, A).await, snapshot(&mut admin, B).await];
        for (i, ns) in [A, B].into_iter().enumerate() {
            if (caller.access)(ns) != Access::Write {
                assert_eq!(
                    before[i], after[i],
                    "{backend}: {}'s calls changed namespace {ns}",
                    caller.name
                );
            }
        }
    }

    // Naming another namespace's run under one's own namespace finds nothing, and
    // pointing one's alias at it changes nothing.
    let team_a = &mut callers[0].client;
    let before = [snapshot(&mut admin, A).await, snapshot(&mut admin, B).await];
    let cross = team_a
        .get_run(pb::GetRunRequest {
            namespace: A.into(),
            run_id: fb.servable.run_id.clone(),
        })
        .await;
    assert_eq!(code(&cross), Code::NotFound, "{backend}: B's run under A");
    let cross = team_a
        .set_alias(pb::SetAliasRequest {
            namespace: A.into(),
            alias: "prod".into(),
            run_id: fb.servable.run_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        code(&cross),
        Code::NotFound,
        "{backend}: A's alias to B's run"
    );
    let cross = team_a
        .download_artifact(pb::DownloadArtifactRequest {
            namespace: A.into(),
            run_id: fb.servable.run_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        code(&cross),
        Code::NotFound,
        "{backend}: B's artifact under A"
    );
    let after = [snapshot(&mut admin, A).await, snapshot(&mut admin, B).await];
    assert_eq!(
        before, after,
        "{backend}: cross-namespace calls changed something"
    );

    // ListNamespaces lists what each caller may read, with who created each.
    let mut listed = Vec::new();
    for caller in &mut callers {
        let names: Vec<String> = caller
            .client
            .list_namespaces(pb::ListNamespacesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| {
                assert!(!n.creator.is_empty() && n.create_time.is_some());
                n.name
            })
            .collect();
        listed.push(names);
    }
    assert_eq!(
        listed,
        vec![
            vec![A.to_string()],
            vec![B.to_string()],
            vec![A.to_string()],
            vec!["default".to_string(), A.to_string(), B.to_string()],
        ],
        "{backend}"
    );
    let all = admin
        .list_namespaces(pb::ListNamespacesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .namespaces;
    assert_eq!(all[0].creator, "system");
    assert_eq!(
        all[1].creator, "admin-tester",
        "{backend}: A's first run made A"
    );

    // Runs and alias history record who acted.
    let a_now = snapshot(&mut admin, A).await;
    let scratch = a_now
        .runs
        .iter()
        .find(|r| r.run_id == fa.scratch.run_id)
        .unwrap();
    assert_eq!(
        (scratch.created_by.as_str(), scratch.updated_by.as_str()),
        ("admin-tester", "admin-tester"),
        "{backend}: the admin changed the scratch run last"
    );
    assert!(a_now.runs.iter().any(|r| r.created_by == "team-a-ci"));
    assert!(!a_now.runs.iter().any(|r| r.created_by == "team-b-ci"));
    let actors: BTreeSet<&str> = a_now.history.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(
        actors,
        BTreeSet::from(["admin-tester"]),
        "{backend}: {actors:?}"
    );
    let own = alias_history_in(&mut admin, A, "t-team-a").await;
    assert!(own
        .iter()
        .all(|e| e.actor == "team-a-ci" && e.namespace == A));
    assert_eq!(own.len(), 4, "{backend}: set, promote, rollback, delete");

    // The watcher of A saw A's changes and nothing of B's, up to a last change in A.
    admin
        .set_alias(pb::SetAliasRequest {
            namespace: A.into(),
            alias: "sentinel".into(),
            run_id: fa.servable.run_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .expect("the sentinel reaches A's watcher")
            .expect("the watch goes on")
            .unwrap();
        let a = e.alias.unwrap();
        assert_eq!(a.namespace, A, "{backend}: {a:?}");
        assert!(
            !b_runs.contains(&a.run_id),
            "{backend}: B's run in A's watch: {a:?}"
        );
        if a.alias == "sentinel" {
            break;
        }
        seen.push(a.alias);
    }
    // Every change of A's own aliases arrived: team-a's four, the admin's four.
    for who in ["t-team-a", "t-admin"] {
        assert_eq!(
            seen.iter().filter(|a| *a == who).count(),
            4,
            "{backend}: {who} in {seen:?}"
        );
    }
    assert!(!seen.iter().any(|a| a == "t-team-b"), "{backend}: {seen:?}");
    server.stop().await;
}

async fn request_ids_and_alias_names_are_per_namespace(db: TestDb) {
    let server = start(db).await;
    let mut admin = server.client(Role::Admin).await;
    let mut made = Vec::new();
    for ns in [A, B, ""] {
        let run = admin
            .create_run(pb::CreateRunRequest {
                namespace: ns.into(),
                request_id: "nightly-1".into(),
                name: "nightly".into(),
                model_type: "seasonal_naive".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        made.push(run);
    }
    let ids: BTreeSet<&str> = made.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "one request id makes one run per namespace");
    assert_eq!(
        made.iter()
            .map(|r| r.namespace.as_str())
            .collect::<Vec<_>>(),
        [A, B, "default"]
    );
    // The repeat in A returns A's run.
    let again = admin
        .create_run(pb::CreateRunRequest {
            namespace: A.into(),
            request_id: "nightly-1".into(),
            name: "nightly".into(),
            model_type: "seasonal_naive".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.run_id, made[0].run_id);

    // The artifact URI starts with the run's namespace.
    let a = servable_run_in(&mut admin, A, "a", &[]).await;
    let b = servable_run_in(&mut admin, B, "b", &[]).await;
    assert!(a.artifact_uri.starts_with("team-a/"), "{}", a.artifact_uri);
    assert!(b.artifact_uri.starts_with("team-b/"), "{}", b.artifact_uri);
    for (ns, run) in [(A, &a), (B, &b)] {
        admin
            .set_alias(pb::SetAliasRequest {
                namespace: ns.into(),
                alias: "production".into(),
                run_id: run.run_id.clone(),
                expected_revision: Some(0),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for (ns, run) in [(A, &a), (B, &b)] {
        let got = admin
            .get_alias(pb::GetAliasRequest {
                namespace: ns.into(),
                alias: "production".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (got.run_id.as_str(), got.revision, got.namespace.as_str()),
            (run.run_id.as_str(), 1, ns)
        );
    }
    let missing = admin
        .get_alias(pb::GetAliasRequest {
            alias: "production".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(&missing), Code::NotFound, "not in default");
    let bad = admin
        .list_runs(pb::ListRunsRequest {
            namespace: "Team/A".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("namespace"), "{}", bad.message());
    server.stop().await;
}

/// 32 clients × 200 guarded swaps (compare-and-swap on the revision each read) of one
/// alias name, in each of two namespaces at once: no update is lost (every success is
/// one revision, the history is gapless and each entry saw the one before) and neither
/// namespace sees the other's runs.
async fn same_alias_in_two_namespaces_swapped_concurrently(db: TestDb) {
    let backend = format!("{:?}", db.backend());
    let server = start(db).await;
    let mut admin = server.client(Role::Admin).await;
    let mut runs = Vec::new();
    for ns in [A, B] {
        let x = servable_run_in(&mut admin, ns, "x", &[]).await.run_id;
        let y = servable_run_in(&mut admin, ns, "y", &[]).await.run_id;
        admin
            .set_alias(pb::SetAliasRequest {
                namespace: ns.into(),
                alias: "hot".into(),
                run_id: x.clone(),
                expected_revision: Some(0),
                ..Default::default()
            })
            .await
            .unwrap();
        runs.push([x, y]);
    }
    const CLIENTS: usize = 32;
    const SWAPS: usize = 200;
    let mut tasks = Vec::new();
    for (n, ns) in [A, B].into_iter().enumerate() {
        for i in 0..CLIENTS {
            let mut c = server
                .granted(Role::Service, &format!("{ns}-{i}"), &[], &[ns])
                .await;
            let pair = runs[n].clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = 0usize;
                for j in 0..SWAPS {
                    let cur = c
                        .get_alias(pb::GetAliasRequest {
                            namespace: ns.into(),
                            alias: "hot".into(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(pair.contains(&cur.run_id), "{ns} sees only its runs");
                    let set = pb::SetAliasRequest {
                        namespace: ns.into(),
                        alias: "hot".into(),
                        run_id: pair[(i + j) % 2].clone(),
                        expected_revision: Some(cur.revision),
                        ..Default::default()
                    };
                    match c.set_alias(set).await {
                        Ok(r) => {
                            assert_eq!(r.get_ref().revision, cur.revision + 1);
                            ok += 1
                        }
                        Err(s) if s.code() == Code::Aborted => {}
                        Err(s) => panic!("unexpected status {s:?}"),
                    }
                }
                (n, ok)
            }));
        }
    }
    let mut successes = [0usize; 2];
    for t in tasks {
        let (n, ok) = t.await.unwrap();
        successes[n] += ok;
    }
    for (n, ns) in [A, B].into_iter().enumerate() {
        let mut history = alias_history_in(&mut admin, ns, "hot").await;
        assert_eq!(
            history.len(),
            successes[n] + 1,
            "{backend}: {ns} holds its own swaps"
        );
        history.reverse();
        for (i, e) in history.iter().enumerate() {
            assert_eq!(e.revision as usize, i + 1, "{backend}: {ns} is gapless");
            assert!(
                runs[n].contains(&e.run_id),
                "{backend}: {ns} points at its own runs"
            );
            if i > 0 {
                assert_eq!(e.previous_run_id, history[i - 1].run_id, "{backend}: {ns}");
            }
        }
        assert!(successes[n] > 0);
    }
    server.stop().await;
}
