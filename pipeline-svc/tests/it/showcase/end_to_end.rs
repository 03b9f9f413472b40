//! The showcase demo end to end: registry-svc and pipeline-svc in process on port 0,
//! driven over gRPC, on SQLite and on Postgres.

use crate::common::{stack::*, *};
use capstan_proto::{pipeline::v1 as pb, registry::v1 as rpb};
use capstan_server::auth::Role;
use futures::StreamExt;

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    showcase_rich_end_to_end,
    showcase_minimal_end_to_end,
    queued_showcase_and_access
);

fn step_statuses(op: &pb::Operation) -> Vec<(String, String, i32)> {
    op.steps
        .iter()
        .map(|s| (s.name.clone(), s.phase.clone(), s.status))
        .collect()
}

/// The run's artifact called `artifact` (empty: its model).
async fn download(registry_url: &str, run_id: &str, artifact: &str) -> Vec<u8> {
    let mut r = registry_client(registry_url).await;
    let mut s = r
        .download_artifact(rpb::DownloadArtifactRequest {
            run_id: run_id.into(),
            artifact: artifact.into(),
            ..Default::default()
        })
        .await
        .expect("download")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.next().await {
        if let Some(rpb::download_artifact_response::Payload::Chunk(c)) = m.expect("chunk").payload
        {
            out.extend_from_slice(&c);
        }
    }
    out
}

async fn showcase_rich_end_to_end(db: TestDb) {
    let stack = Stack::start(&db, |_| {}, Vec::new()).await;
    let alice = token("alice", Role::User);
    let t = std::time::Instant::now();
    let (events, op) = run_demo(&stack.pipeline_url, &alice, demo_request("showcase_rich")).await;
    eprintln!("showcase_rich: {:?}, {} events", t.elapsed(), events.len());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as i64 + 1, "gapless: {events:#?}");
    }
    let last = events.last().unwrap();
    assert_eq!(last.r#type, pb::OperationEventType::Finished as i32);
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    assert_eq!(
        (op.kind.as_str(), op.owner.as_str()),
        ("demo.showcase_rich", "alice")
    );
    assert_eq!(op.progress_percent, 100);
    let phases: Vec<_> = op.steps.iter().map(|s| s.phase.as_str()).collect();
    assert_eq!(
        phases,
        [
            "data",
            "training",
            "registry",
            "decision",
            "planning",
            "knowledge",
            "agents",
            "ops",
            "cleanup"
        ]
    );
    for s in &op.steps {
        assert_eq!(
            s.status,
            pb::StepStatus::Passed as i32,
            "{:#?}",
            step_statuses(&op)
        );
        assert!(!s.detail.is_empty());
    }
    let d = demo_result(&op);
    let champion = d.champion.clone().expect("champion");
    assert_eq!(champion.run_id, d.winning_run_id);
    assert_eq!(d.candidates.len(), 3);
    assert!(
        champion.wape < d.baseline_wape,
        "champion WAPE {} must beat the seasonal-naive baseline {}",
        champion.wape,
        d.baseline_wape
    );
    // The live alias ends on the champion, and its history records every swap.
    assert_eq!(
        alias_run(&stack.registry_url).await.as_deref(),
        Some(d.winning_run_id.as_str())
    );
    assert_eq!(d.alias_run_id, d.winning_run_id);
    let mut r = registry_client(&stack.registry_url).await;
    let history = r
        .list_alias_history(rpb::ListAliasHistoryRequest {
            alias: "demo-production".into(),
            page_size: 100,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let forced = history
        .iter()
        .find(|h| h.run_id == d.challenger_run_id)
        .expect("the forced challenger is in the history");
    assert!(forced.reason.contains("FORCED"), "{forced:?}");
    assert_eq!(
        history[0].run_id, d.winning_run_id,
        "newest entry restores the champion"
    );
    // The challenger is worse, with a real, parseable artifact.
    let challenger = r
        .get_run(rpb::GetRunRequest {
            run_id: d.challenger_run_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(challenger.metrics["wape"] > champion.wape);
    capstan_proto::artifact_uri::ArtifactUri::parse(&challenger.artifact_uri).unwrap();
    // Planning used the recorded champion, not the alias (which held the challenger).
    let report: serde_json::Value =
        serde_json::from_slice(&download(&stack.registry_url, &d.scenario_run_id, "").await)
            .unwrap();
    assert_eq!(report["champion_run_id"], d.winning_run_id.as_str());
    assert!(!d.scenarios.is_empty());
    assert!(
        d.chart_artifact_uri.ends_with(".svg"),
        "{}",
        d.chart_artifact_uri
    );
    assert_eq!(
        d.chart_run_id, d.scenario_run_id,
        "the chart is on the scenario run"
    );
    let svg = download(&stack.registry_url, &d.chart_run_id, "chart").await;
    assert!(String::from_utf8_lossy(&svg).contains("<svg"));
    assert!(!d.briefing.is_empty());

    // StartDemo is idempotent on request_id.
    let mut p = pipeline_client(&stack.pipeline_url, &alice).await;
    let req = pb::StartDemoRequest {
        request_id: "same".into(),
        ..demo_request("showcase_minimal")
    };
    let a = p.start_demo(req.clone()).await.unwrap().into_inner();
    let b = p.start_demo(req).await.unwrap().into_inner();
    assert_eq!(a.operation_id, b.operation_id);
    stack.stop().await;
}

async fn showcase_minimal_end_to_end(db: TestDb) {
    let stack = Stack::start(&db, |_| {}, Vec::new()).await;
    let svc = token("ci", Role::Service);
    let (events, op) = run_demo(&stack.pipeline_url, &svc, demo_request("showcase_minimal")).await;
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    let names: Vec<_> = op.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "generate_data",
            "train_and_backtest",
            "register_candidates",
            "cleanup"
        ]
    );
    assert!(op
        .steps
        .iter()
        .all(|s| s.status == pb::StepStatus::Passed as i32));
    let d = demo_result(&op);
    let champion = d.champion.unwrap();
    assert!(champion.wape < d.baseline_wape);
    assert_eq!(alias_run(&stack.registry_url).await, Some(d.winning_run_id));
    assert_eq!(
        events.last().unwrap().status,
        pb::OperationStatus::Succeeded as i32
    );
    stack.stop().await;
}

async fn queued_showcase_and_access(db: TestDb) {
    // Everything queued by configuration; the external knowledge provider is selected but
    // not configured, so that step is SKIPPED and the operation still succeeds.
    let stack = Stack::start(
        &db,
        |a| {
            a.direct_execution = false;
            a.knowledge_provider = pipeline_svc::app::KnowledgeProvider::External;
        },
        Vec::new(),
    )
    .await;
    let alice = token("alice", Role::User);
    let (_, op) = run_demo(&stack.pipeline_url, &alice, demo_request("showcase_rich")).await;
    assert_eq!(op.execution_mode, pb::ExecutionMode::Queued as i32);
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    let knowledge = op.steps.iter().find(|s| s.phase == "knowledge").unwrap();
    assert_eq!(knowledge.status, pb::StepStatus::Skipped as i32);
    assert!(
        knowledge.detail.contains("not configured"),
        "{}",
        knowledge.detail
    );

    // A user sees only its operations; admins see all; no token is UNAUTHENTICATED.
    let id = op.operation_id.clone();
    let mut bob = operations_client(&stack.pipeline_url, &token("bob", Role::User)).await;
    let err = bob
        .get_operation(pb::GetOperationRequest {
            operation_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = bob
        .watch_operation(pb::WatchOperationRequest {
            operation_id: id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = bob
        .cancel_operation(pb::CancelOperationRequest {
            operation_id: id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let listed = bob
        .list_operations(pb::ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.operations.is_empty());
    let mut admin = operations_client(&stack.pipeline_url, &token("root", Role::Admin)).await;
    admin
        .get_operation(pb::GetOperationRequest {
            operation_id: id.clone(),
        })
        .await
        .unwrap();
    let mut alice_ops = operations_client(&stack.pipeline_url, &alice).await;
    let listed = alice_ops
        .list_operations(pb::ListOperationsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.operations.len(), 1);
    assert!(listed.next_page_token.is_empty());
    let err = alice_ops
        .get_operation(pb::GetOperationRequest {
            operation_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut anon =
        capstan_proto::pipeline::v1::operations_service_client::OperationsServiceClient::new(
            capstan_client::connect(&stack.pipeline_url, None)
                .await
                .unwrap(),
        );
    let err = anon
        .get_operation(pb::GetOperationRequest { operation_id: id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = pipeline_client(&stack.pipeline_url, &alice)
        .await
        .start_demo(pb::StartDemoRequest {
            scenario: "nope".into(),
            horizon: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("scenario") && err.message().contains("horizon"),
        "{}",
        err.message()
    );
    stack.stop().await;
}

/// registry-svc and pipeline-svc may share one Postgres database: the pipeline keeps
/// its tables and migration history in its own schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_share_one_postgres_database() {
    let db = TestDb::postgres().await;
    let base = Base::start(&db).await;
    let shared = base.registry_args_url.clone();
    let stack = Stack::on(base, |a| a.common.database_url = Some(shared), Vec::new()).await;
    let (_, op) = run_demo(
        &stack.pipeline_url,
        &token("ci", Role::Service),
        demo_request("showcase_minimal"),
    )
    .await;
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    stack.stop().await;
}
