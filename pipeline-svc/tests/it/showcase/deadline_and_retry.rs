//! Operation deadlines and RetryOperation on the showcase: a QUEUED demo that another
//! replica runs fails once its deadline passes, with its compensations run and the alias
//! back on the champion; a demo that failed at `scenario_simulate_and_save` is retried to
//! SUCCEEDED without running its earlier steps again, with one gapless event log.

use std::time::Duration;

use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use tonic::Code;

use crate::common::{operations_client, server::options, stack::*, token, until_finished, TestDb};

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    deadline_fails_a_hanging_queued_demo_on_another_replica,
    retry_resumes_a_failed_demo_at_its_failed_step,
    retry_refuses_other_states_and_repeats_nothing
);

const HANGING: &str = "scenario_simulate_and_save";

fn op_id(op: &pb::Operation) -> pb::GetOperationRequest {
    pb::GetOperationRequest {
        operation_id: op.operation_id.clone(),
    }
}

async fn deadline_fails_a_hanging_queued_demo_on_another_replica(db: TestDb) {
    // The worker runs queued work and hangs in the planning step; the front replica only
    // takes requests, so the deadline it stored is enforced by the other one.
    let stack = Stack::start(
        &db,
        |a| {
            a.direct_execution = false;
            a.hang_step = Some(HANGING.into());
        },
        Vec::new(),
    )
    .await;
    let mut front_args = stack.args.clone();
    front_args.queue_workers = false;
    front_args.hang_step = None;
    let front = pipeline_svc::app::start(&front_args, options())
        .await
        .expect("front replica starts");
    let front_url = format!("http://{}", front.addr);
    let ops = token("ops", Role::Admin);
    let mut pipeline = pipeline_client(&front_url, &ops).await;

    let mut bad = demo_request("showcase_rich");
    bad.timeout = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    let refused = pipeline.start_demo(bad).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("timeout"), "{refused:?}");

    let mut request = demo_request("showcase_rich");
    request.timeout = Some(prost_types::Duration {
        seconds: 6,
        nanos: 0,
    });
    let op = pipeline.start_demo(request).await.unwrap().into_inner();
    assert_eq!(op.execution_mode, pb::ExecutionMode::Queued as i32);
    let deadline = op.deadline.expect("the operation carries its deadline");
    let created = op.create_time.expect("create time");
    assert_eq!(
        deadline.seconds - created.seconds,
        6,
        "{deadline:?} {created:?}"
    );

    let mut operations = operations_client(&front_url, &ops).await;
    let mut stream = operations
        .watch_operation(pb::WatchOperationRequest {
            operation_id: op.operation_id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let events = until_finished(&mut stream, "the demo past its deadline").await;
    let done = operations
        .get_operation(op_id(&op))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.status, pb::OperationStatus::Failed as i32, "{done:#?}");
    let error = done.error.clone().expect("error");
    assert!(error.message.contains("deadline passed"), "{error:?}");
    assert_eq!(error.step, HANGING, "it failed in the hanging step");
    assert!(error.compensation_errors.is_empty(), "{error:?}");
    assert!(
        events
            .iter()
            .any(|e| e.r#type == pb::OperationEventType::Compensation as i32
                && e.message.contains("demo-production")),
        "the safeguard ran: {events:#?}"
    );
    let d = demo_result(&done);
    assert_eq!(
        alias_run(&stack.registry_url).await.as_deref(),
        Some(d.winning_run_id.as_str()),
        "the alias is back on the champion"
    );
    assert_ne!(d.winning_run_id, d.challenger_run_id);
    front.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), front.task).await;
    stack.stop().await;
}

/// Starts `RetryOperation` and follows the operation to its end.
async fn retry_and_follow(
    url: &str,
    token: &str,
    op: &pb::Operation,
    request_id: &str,
) -> (pb::Operation, Vec<pb::OperationEvent>) {
    let mut operations = operations_client(url, token).await;
    let retried = operations
        .retry_operation(pb::RetryOperationRequest {
            operation_id: op.operation_id.clone(),
            request_id: request_id.into(),
        })
        .await
        .expect("RetryOperation")
        .into_inner();
    assert!(
        retried.last_sequence > op.last_sequence,
        "the log goes on: {retried:#?}"
    );
    let mut stream = operations
        .watch_operation(pb::WatchOperationRequest {
            operation_id: op.operation_id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let events = until_finished(&mut stream, "the retried demo").await;
    let done = operations
        .get_operation(op_id(op))
        .await
        .unwrap()
        .into_inner();
    (done, events)
}

async fn retry_resumes_a_failed_demo_at_its_failed_step(db: TestDb) {
    let mut stack = Stack::start(&db, |a| a.fail_step = Some(HANGING.into()), Vec::new()).await;
    let ops = token("ops", Role::Admin);
    let (_, failed) = run_demo(&stack.pipeline_url, &ops, demo_request("showcase_rich")).await;
    assert_eq!(failed.status, pb::OperationStatus::Failed as i32);
    assert_eq!(failed.error.as_ref().unwrap().step, HANGING);
    let champion = demo_result(&failed).winning_run_id;
    assert_eq!(alias_run(&stack.registry_url).await, Some(champion.clone()));
    // The failure is gone once the replica runs without the injected fault.
    stack.restart_pipeline(|a| a.fail_step = None).await;
    let (done, events) = retry_and_follow(&stack.pipeline_url, &ops, &failed, "retry-1").await;
    assert_eq!(
        done.status,
        pb::OperationStatus::Succeeded as i32,
        "{done:#?}"
    );
    assert!(done.error.is_none(), "{done:#?}");
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=done.last_sequence).collect::<Vec<_>>(),
        "one gapless log from 1, through both attempts"
    );
    let retried: Vec<_> = events
        .iter()
        .filter(|e| e.r#type == pb::OperationEventType::Retried as i32)
        .collect();
    assert_eq!(retried.len(), 1, "{events:#?}");
    assert!(retried[0].message.contains(HANGING), "{:?}", retried[0]);
    let failed_at = done.steps.iter().position(|s| s.name == HANGING).unwrap();
    for (i, s) in done.steps.iter().enumerate() {
        assert_eq!(s.status, pb::StepStatus::Passed as i32, "{s:?}");
        let expected = if i == failed_at { 2 } else { 1 };
        assert_eq!(s.attempt, expected, "{:#?}", done.steps);
    }
    // Earlier steps did not run again: each started once in the whole log.
    for s in &done.steps[..failed_at] {
        let starts = events
            .iter()
            .filter(|e| e.r#type == pb::OperationEventType::StepStarted as i32 && e.step == s.name)
            .count();
        assert_eq!(starts, 1, "{} ran again", s.name);
    }
    let d = demo_result(&done);
    assert_eq!(d.winning_run_id, champion, "the same champion");
    assert_eq!(
        alias_run(&stack.registry_url).await,
        Some(champion),
        "the alias ends on the champion"
    );
    assert!(!d.scenario_run_id.is_empty() && !d.briefing.is_empty());
    stack.stop().await;
}

async fn retry_refuses_other_states_and_repeats_nothing(db: TestDb) {
    let mut stack = Stack::start(&db, |a| a.fail_step = Some("cleanup".into()), Vec::new()).await;
    let ops = token("ops", Role::Admin);
    let mut operations = operations_client(&stack.pipeline_url, &ops).await;
    let retry = |id: &str, request_id: &str| pb::RetryOperationRequest {
        operation_id: id.into(),
        request_id: request_id.into(),
    };
    let bad = operations
        .retry_operation(retry("not-a-uuid", ""))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let missing = operations
        .retry_operation(retry(&uuid::Uuid::now_v7().to_string(), ""))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    let (_, failed) = run_demo(&stack.pipeline_url, &ops, demo_request("showcase_minimal")).await;
    assert_eq!(failed.status, pb::OperationStatus::Failed as i32);
    // Another user's operation is not found for a user.
    let mut mallory = operations_client(&stack.pipeline_url, &token("mallory", Role::User)).await;
    let hidden = mallory
        .retry_operation(retry(&failed.operation_id, ""))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");

    stack.restart_pipeline(|a| a.fail_step = None).await;
    let (done, _) = retry_and_follow(&stack.pipeline_url, &ops, &failed, "once").await;
    assert_eq!(
        done.status,
        pb::OperationStatus::Succeeded as i32,
        "{done:#?}"
    );
    let mut operations = operations_client(&stack.pipeline_url, &ops).await;
    // The same request id again: the operation as it is, not a second retry.
    let again = operations
        .retry_operation(retry(&failed.operation_id, "once"))
        .await
        .expect("a repeated retry returns the operation")
        .into_inner();
    assert_eq!(again.status, pb::OperationStatus::Succeeded as i32);
    assert_eq!(
        again.last_sequence, done.last_sequence,
        "nothing was recorded"
    );
    // A new request on a SUCCEEDED operation is refused and changes nothing.
    let refused = operations
        .retry_operation(retry(&failed.operation_id, "twice"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("SUCCEEDED")
            && refused.message().contains("only a FAILED or CANCELLED"),
        "{refused:?}"
    );
    let after = operations
        .get_operation(op_id(&failed))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.last_sequence, done.last_sequence);
    stack.stop().await;
}
