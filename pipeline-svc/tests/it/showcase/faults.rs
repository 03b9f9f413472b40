//! Fault injection on the showcase: a failure at any step before cleanup ends the
//! operation FAILED naming the step with `demo-production` back on the champion (or on
//! its value before the run); a worker process that crashes mid-run is resumed by another
//! replica from the last finished step.

use std::time::Duration;

use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use pipeline_svc::domain::showcase::params::RICH_STEPS;

use crate::common::{channel, operations_client, replica::Replica, stack::*, token, TestDb};

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    every_step_failure_restores_the_alias,
    crash_mid_showcase_resumes_on_another_replica,
    cancel_inside_a_step_restores_the_alias
);

async fn every_step_failure_restores_the_alias(db: TestDb) {
    let mut stack = Stack::start(&db, |_| {}, Vec::new()).await;
    let ops = token("ops", Role::Admin);
    // A first run gives the alias a value from before the failing runs.
    let (_, first) = run_demo(&stack.pipeline_url, &ops, demo_request("showcase_minimal")).await;
    assert_eq!(first.status, pb::OperationStatus::Succeeded as i32);
    let cleanup = RICH_STEPS.len() - 1;
    for (i, step) in RICH_STEPS[..cleanup].iter().enumerate() {
        stack
            .restart_pipeline(|a| a.fail_step = Some(step.name.to_string()))
            .await;
        let before = alias_run(&stack.registry_url).await;
        assert!(before.is_some());
        let mut request = demo_request("showcase_rich");
        request.seed = Some(100 + i as u64);
        let (events, op) = run_demo(&stack.pipeline_url, &ops, request).await;
        let name = step.name;
        assert_eq!(
            op.status,
            pb::OperationStatus::Failed as i32,
            "{name}: {op:#?}"
        );
        let error = op.error.clone().expect("error");
        assert_eq!(error.step, name);
        assert!(
            error.message.contains("injected failure"),
            "{name}: {error:?}"
        );
        assert!(error.compensation_errors.is_empty(), "{name}: {error:?}");
        let last = events.last().unwrap();
        assert_eq!(last.status, pb::OperationStatus::Failed as i32);
        assert!(last.message.contains(name), "{name}: {}", last.message);
        for (j, s) in op.steps.iter().enumerate() {
            let expected = match j.cmp(&i) {
                std::cmp::Ordering::Less => pb::StepStatus::Passed,
                std::cmp::Ordering::Equal => pb::StepStatus::Failed,
                std::cmp::Ordering::Greater => pb::StepStatus::Skipped,
            };
            assert_eq!(s.status, expected as i32, "{name}: step {} {s:?}", s.name);
        }
        let d = demo_result(&op);
        let after = alias_run(&stack.registry_url).await;
        if d.winning_run_id.is_empty() {
            assert_eq!(
                after, before,
                "{name}: alias back on its value before the run"
            );
        } else {
            assert_eq!(
                after.as_deref(),
                Some(d.winning_run_id.as_str()),
                "{name}: alias back on the champion"
            );
            assert!(
                events
                    .iter()
                    .any(|e| e.r#type == pb::OperationEventType::Compensation as i32
                        && e.message.contains("demo-production")),
                "{name}: the safeguard is recorded"
            );
        }
        if !d.challenger_run_id.is_empty() {
            assert_ne!(
                after.as_deref(),
                Some(d.challenger_run_id.as_str()),
                "{name}: never the worse run"
            );
        }
    }
    stack.stop().await;
}

async fn crash_mid_showcase_resumes_on_another_replica(db: TestDb) {
    let base = Base::start(&db).await;
    let a = base.pipeline_args.clone();
    let path = |p: &std::path::Path| p.display().to_string();
    // Replica "doomed" (a real process) aborts when planning starts: the alias then holds
    // the worse challenger that the decision step forced.
    let doomed = Replica::spawn(
        a.common.database_url.as_deref().unwrap(),
        &a.common.data_dir,
        "doomed",
        &[
            "--registry-url",
            &a.registry_url,
            "--registry-token-file",
            &path(a.registry_token_file.as_deref().unwrap()),
            "--direct-execution",
            "false",
            "--lease-seconds",
            "1",
            "--abort-at-step",
            "scenario_simulate_and_save",
        ],
    );
    let user = token("alice", Role::User);
    let channel = channel(&doomed.url, &user).await;
    let op = pb::pipeline_service_client::PipelineServiceClient::new(channel)
        .start_demo(demo_request("showcase_rich"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.execution_mode, pb::ExecutionMode::Queued as i32);
    let status = doomed.exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "{status:?}");
    let stranded = alias_run(&base.registry_url).await;

    // Replica "survivor" claims the job once the lease expires and resumes at planning.
    let stack = Stack::on(base, |a| a.replica_id = Some("survivor".into()), Vec::new()).await;
    let mut client = operations_client(&stack.pipeline_url, &user).await;
    let mut s = client
        .watch_operation(pb::WatchOperationRequest {
            operation_id: op.operation_id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut sequences = Vec::new();
    let mut resumed = false;
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), s.message())
        .await
        .expect("the operation finishes")
        .unwrap()
    {
        if e.r#type == pb::OperationEventType::Heartbeat as i32 {
            continue;
        }
        resumed |= e.message.contains("resumed on survivor");
        sequences.push(e.sequence);
    }
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
    assert!(resumed);
    let op = client
        .get_operation(pb::GetOperationRequest {
            operation_id: op.operation_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    assert_eq!(op.attempts, 2);
    let attempts: Vec<_> = op
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.attempt))
        .collect();
    for (name, attempt) in &attempts {
        let expected = if *name == "scenario_simulate_and_save" {
            2
        } else {
            1
        };
        assert_eq!(*attempt, expected, "{attempts:?}");
    }
    let d = demo_result(&op);
    assert_eq!(
        stranded.as_deref(),
        Some(d.challenger_run_id.as_str()),
        "the crash left the worse run live"
    );
    assert_eq!(
        alias_run(&stack.registry_url).await,
        Some(d.winning_run_id),
        "the resumed run restored the champion"
    );
    stack.stop().await;
}

/// A CancelOperation reaches a step that is running (here one that hangs after the alias
/// moved): the demo ends CANCELLED, its compensations put `demo-production` back on the
/// champion, never on the forced challenger.
async fn cancel_inside_a_step_restores_the_alias(db: TestDb) {
    let stack = Stack::start(
        &db,
        |a| a.hang_step = Some("scenario_simulate_and_save".into()),
        Vec::new(),
    )
    .await;
    let ops = token("ops", Role::Admin);
    let mut pipeline = pipeline_client(&stack.pipeline_url, &ops).await;
    let op = pipeline
        .start_demo(demo_request("showcase_rich"))
        .await
        .expect("StartDemo")
        .into_inner();
    let mut operations = operations_client(&stack.pipeline_url, &ops).await;
    let get = pb::GetOperationRequest {
        operation_id: op.operation_id.clone(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = operations
            .get_operation(get.clone())
            .await
            .unwrap()
            .into_inner();
        if now.steps[4].status == pb::StepStatus::Running as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached the step: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    operations
        .cancel_operation(pb::CancelOperationRequest {
            operation_id: op.operation_id.clone(),
            ..Default::default()
        })
        .await
        .expect("CancelOperation");
    let mut stream = operations
        .watch_operation(pb::WatchOperationRequest {
            operation_id: op.operation_id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    crate::common::until_finished(&mut stream, "the cancelled demo").await;
    let done = operations.get_operation(get).await.unwrap().into_inner();
    assert_eq!(
        done.status,
        pb::OperationStatus::Cancelled as i32,
        "{done:#?}"
    );
    let d = demo_result(&done);
    assert_eq!(
        alias_run(&stack.registry_url).await.as_deref(),
        Some(d.winning_run_id.as_str()),
        "the alias is back on the champion"
    );
    assert_ne!(d.winning_run_id, d.challenger_run_id);
    stack.stop().await;
}
