//! DeleteRun over real gRPC: refused while an alias points at the run, gone from every
//! read at once, purged after the grace period.

use std::time::Duration;

use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing::TestDb};
use tonic::Code;
use uuid::Uuid;

use crate::support::{servable_run, set, start_with};

capstan_server::test_on_both_backends!(
    delete_run_is_refused_while_aliased_then_leaves_and_is_purged,
);

/// Rows of `table` that refer to `run`, read straight from the database.
pub async fn rows_of(db: &TestDb, table: &str, run: &str) -> i64 {
    let pool = capstan_server::db::pool(&db.url, db.backend(), 1, None)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE run_id = $1"))
        .bind(run)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

fn delete(run_id: &str, etag: &str) -> pb::DeleteRunRequest {
    pb::DeleteRunRequest {
        run_id: run_id.into(),
        etag: etag.into(),
        ..Default::default()
    }
}

async fn delete_run_is_refused_while_aliased_then_leaves_and_is_purged(db: TestDb) {
    let server = start_with(db, &["--deleted-run-grace-seconds", "0"]).await;
    let mut c = server.client(Role::Service).await;
    let doomed = servable_run(&mut c, "doomed", &[("wape", 0.2)]).await;
    let other = servable_run(&mut c, "stays", &[("wape", 0.3)]).await;
    c.set_alias(set("prod", &doomed.run_id, None))
        .await
        .unwrap();
    c.set_alias(set("canary", &doomed.run_id, None))
        .await
        .unwrap();

    let refused = c.delete_run(delete(&doomed.run_id, "")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    for alias in ["\"prod\"", "\"canary\""] {
        assert!(refused.message().contains(alias), "{}", refused.message());
    }
    // Bad input and a stale etag change nothing either.
    let bad = c.delete_run(delete("not-a-uuid", "")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let bad = c.delete_run(delete(&doomed.run_id, "x")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let missing = c
        .delete_run(delete(&Uuid::new_v4().to_string(), ""))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let reader = server.client(Role::User).await;
    let denied = reader
        .clone()
        .delete_run(delete(&other.run_id, ""))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    for alias in ["prod", "canary"] {
        c.set_alias(set(alias, &other.run_id, None)).await.unwrap();
    }
    let stale = c.delete_run(delete(&doomed.run_id, "1")).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    let get = |id: &str| pb::GetRunRequest {
        run_id: id.into(),
        ..Default::default()
    };
    let current = c.get_run(get(&doomed.run_id)).await.unwrap().into_inner();
    assert_eq!(current, doomed, "refusals changed nothing");

    c.delete_run(delete(&doomed.run_id, &doomed.etag))
        .await
        .unwrap();
    let gone = c.get_run(get(&doomed.run_id)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let listed: Vec<String> = c
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(listed, vec![other.run_id.clone()]);
    let aimed = c
        .set_alias(set("prod", &doomed.run_id, None))
        .await
        .unwrap_err();
    assert_eq!(aimed.code(), Code::NotFound, "{aimed:?}");
    let download = c
        .download_artifact(pb::DownloadArtifactRequest {
            run_id: doomed.run_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(download.err().map(|s| s.code()), Some(Code::NotFound));
    let again = c.delete_run(delete(&doomed.run_id, "")).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // The purger (every second here, grace 0) takes the rows.
    let mut left = rows_of(&server.db, "runs", &doomed.run_id).await;
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = rows_of(&server.db, "runs", &doomed.run_id).await;
    }
    assert_eq!(left, 0, "purged after the grace period");
    assert_eq!(
        rows_of(&server.db, "run_artifacts", &doomed.run_id).await,
        0
    );
    assert_eq!(rows_of(&server.db, "runs", &other.run_id).await, 1);
    server.stop().await;
}

capstan_server::test_on_both_backends!(retention_deletes_only_old_terminal_runs_nothing_needs,);

/// Retention deletes terminal runs past it that no alias points at and no alias history
/// entry names (then purged as any deleted run), and nothing else.
async fn retention_deletes_only_old_terminal_runs_nothing_needs(db: TestDb) {
    use std::sync::Arc;

    use registry_svc::{
        app::AliasReads,
        domain::{
            aliases::SetAlias,
            registry::Registry,
            runs::{RunPatch, RunStatus},
        },
        error::Error,
        store::{blobs::FsBlobStore, sql::SqlStore},
    };

    let blobs = FsBlobStore::open(&db.data_dir().join("artifacts"))
        .await
        .unwrap();
    let registry = Registry::new(
        Arc::new(SqlStore::connect(&db.url).await.unwrap()),
        Arc::new(blobs),
        AliasReads::Fresh,
    );
    let run = |name: &'static str, end: Option<RunStatus>| {
        let registry = registry.clone();
        async move {
            let id = crate::collector::run_with(&registry, name, name.as_bytes()).await;
            if let Some(status) = end {
                let patch = RunPatch {
                    status: Some(status),
                    ..Default::default()
                };
                registry
                    .update_run("default", id, &patch, "tester")
                    .await
                    .unwrap();
            }
            id
        }
    };
    let done = run("done", Some(RunStatus::Succeeded)).await;
    let failed = run("failed", Some(RunStatus::Failed)).await;
    let aliased = run("aliased", Some(RunStatus::Succeeded)).await;
    let historic = run("historic", Some(RunStatus::Succeeded)).await;
    let running = run("running", None).await;
    for target in [historic, aliased] {
        registry
            .set_alias(
                SetAlias {
                    namespace: "default".into(),
                    alias: "prod".into(),
                    run_id: target,
                    description: String::new(),
                    expected_revision: None,
                    reason: "retention test".into(),
                },
                "tester",
            )
            .await
            .unwrap();
    }

    assert_eq!(
        registry
            .expire_runs(Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "nothing is old enough"
    );
    assert_eq!(registry.expire_runs(Duration::ZERO).await.unwrap(), 2);
    for id in [done, failed] {
        let gone = registry.get_run("default", id).await;
        assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
    }
    for id in [aliased, historic, running] {
        registry.get_run("default", id).await.unwrap();
    }
    assert_eq!(registry.expire_runs(Duration::ZERO).await.unwrap(), 0);
    registry.purge_deleted_runs(Duration::ZERO).await.unwrap();
    for id in [done, failed] {
        assert_eq!(rows_of(&db, "runs", &id.to_string()).await, 0, "purged");
    }
    assert_eq!(rows_of(&db, "runs", &historic.to_string()).await, 1);
}
