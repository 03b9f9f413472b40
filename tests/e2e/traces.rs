//! One demo is one trace: registry-svc and pipeline-svc, started with the standard OTEL_*
//! variables pointing at a real OTLP receiver (the collector's trace service from the
//! OpenTelemetry protos, served here on port 0), export the spans of a demo whose
//! StartDemo carried a W3C `traceparent`; they all join that trace, nested as the work
//! was, each with the request id.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use capstan_client::{OperationsClient, PipelineClient};
use capstan_proto::pipeline::v1 as pb;
use capstan_tests::{binary, Service};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value, KeyValue},
    trace::v1::Span,
};
use tonic::{Request, Response, Status};

/// A span as received, with the service that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(match value.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut got = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                got.extend(scope.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        url
    }

    fn of_trace(&self, trace_id: &[u8]) -> Vec<Received> {
        let got = self.0.lock().unwrap();
        got.iter()
            .filter(|r| r.span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

const REQUEST_ID: &str = "trace-e2e-demo";

/// registry-svc and pipeline-svc exporting to one receiver, with the default sampler
/// (parent-based, always on).
struct Traced {
    receiver: Receiver,
    // Field order: the pipeline stops before the registry, the directory last.
    pipeline: Service,
    _registry: Service,
    _dir: tempfile::TempDir,
}

impl Traced {
    async fn start() -> Self {
        let receiver = Receiver::default();
        let otlp = receiver.serve().await;
        let dir = tempfile::tempdir().unwrap();
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ];
        let registry_dir = dir.path().join("registry");
        let registry_db = format!("sqlite://{}/registry.db?mode=rwc", registry_dir.display());
        std::fs::create_dir_all(&registry_dir).unwrap();
        let registry = Service::start(
            &binary("registry-svc"),
            &[
                "--listen",
                "127.0.0.1:0",
                "--auth",
                "disabled",
                "--data-dir",
                registry_dir.to_str().unwrap(),
                "--database-url",
                &registry_db,
            ],
            &env,
            dir.path().join("registry.log"),
        )
        .unwrap();
        let pipeline_dir = dir.path().join("pipeline");
        let pipeline = Service::start(
            &binary("pipeline-svc"),
            &[
                "--listen",
                "127.0.0.1:0",
                "--auth",
                "disabled",
                "--data-dir",
                pipeline_dir.to_str().unwrap(),
                "--registry-url",
                &registry.url(),
            ],
            &env,
            dir.path().join("pipeline.log"),
        )
        .unwrap();
        Self {
            receiver,
            pipeline,
            _registry: registry,
            _dir: dir,
        }
    }

    /// Runs a demo to its end, its StartDemo carrying `traceparent` and `request_id`.
    async fn demo(&self, traceparent: &str, request_id: &str) -> pb::Operation {
        let channel = capstan_client::connect(&self.pipeline.url(), None)
            .await
            .unwrap();
        let mut start = Request::new(pb::StartDemoRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            scenario: "showcase_minimal".into(),
            seed: Some(7),
            series_count: 3,
            days: 120,
            horizon: 7,
            execution_mode: pb::ExecutionMode::Direct as i32,
            alias: String::new(),
            timeout: None,
        });
        start
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        start
            .metadata_mut()
            .insert("x-request-id", request_id.parse().unwrap());
        let op = PipelineClient::new(channel.clone())
            .start_demo(start)
            .await
            .unwrap()
            .into_inner();
        let mut operations = OperationsClient::new(channel);
        let mut events = operations
            .watch_operation(pb::WatchOperationRequest {
                operation_id: op.operation_id.clone(),
                after_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        while events.message().await.unwrap().is_some() {}
        let done = operations
            .get_operation(pb::GetOperationRequest {
                operation_id: op.operation_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            done.status,
            pb::OperationStatus::Succeeded as i32,
            "the demo failed: {done:?}\npipeline log:\n{}",
            self.pipeline.log_text()
        );
        done
    }
}

fn traceparent(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> String {
    format!(
        "00-{}-{}-0{}",
        hex::encode(trace_id),
        hex::encode(span_id),
        u8::from(sampled)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_is_one_trace_across_pipeline_and_registry() {
    let traced = Traced::start().await;
    let (receiver, pipeline) = (&traced.receiver, &traced.pipeline);

    // The caller's trace: the StartDemo span must be its child.
    let trace_id: [u8; 16] = *uuid::Uuid::new_v4().as_bytes();
    let caller_span: [u8; 8] = [0x5e, 0xed, 0, 0, 0, 0, 0, 0x01];
    let op = traced
        .demo(&traceparent(trace_id, caller_span, true), REQUEST_ID)
        .await;
    let done = &op;
    let steps: BTreeSet<String> = done.steps.iter().map(|s| s.name.clone()).collect();

    // The operation span ends with the operation; wait for it and for what came before.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = receiver.of_trace(&trace_id);
        let ended = spans.iter().any(|r| r.span.name == "operation");
        if ended || Instant::now() > deadline {
            // One more export period for the registry's last spans.
            tokio::time::sleep(Duration::from_millis(500)).await;
            break receiver.of_trace(&trace_id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_id: BTreeMap<Vec<u8>, &Received> =
        spans.iter().map(|r| (r.span.span_id.clone(), r)).collect();
    let parent = |r: &Received| by_id.get(&r.span.parent_span_id).copied();
    let listing = spans
        .iter()
        .map(|r| {
            format!(
                "{} {:?} parent {}",
                r.service,
                r.span.name,
                hex::encode(&r.span.parent_span_id)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");

    let start_demo = spans
        .iter()
        .find(|r| r.span.name == "capstan.pipeline.v1.PipelineService/StartDemo")
        .unwrap_or_else(|| panic!("no StartDemo span in the trace:\n{listing}"));
    assert_eq!(
        start_demo.span.parent_span_id, caller_span,
        "StartDemo joins the caller's span"
    );
    let operation = spans
        .iter()
        .find(|r| r.span.name == "operation")
        .unwrap_or_else(|| panic!("no operation span:\n{listing}"));
    assert_eq!(
        parent(operation).map(|p| p.span.span_id.clone()),
        Some(start_demo.span.span_id.clone()),
        "the operation is a child of StartDemo:\n{listing}"
    );
    assert_eq!(
        operation.attr("operation_id"),
        Some(op.operation_id.clone())
    );

    let step_spans: Vec<&Received> = spans
        .iter()
        .filter(|r| r.span.name.starts_with("step "))
        .collect();
    let traced_steps: BTreeSet<String> = step_spans.iter().filter_map(|r| r.attr("step")).collect();
    assert_eq!(traced_steps, steps, "a span per step:\n{listing}");
    for s in &step_spans {
        assert_eq!(
            s.span.parent_span_id,
            operation.span.span_id,
            "step {:?} is a child of the operation",
            s.attr("step")
        );
        assert_eq!(s.attr("operation_id"), Some(op.operation_id.clone()));
    }

    // The registry calls: made inside a step, served by the registry under them.
    let calls: Vec<&Received> = spans
        .iter()
        .filter(|r| r.service == "pipeline-svc" && r.span.name.starts_with("registry "))
        .collect();
    assert!(
        calls.iter().any(|c| c.span.name == "registry CreateRun"),
        "the registry calls are traced:\n{listing}"
    );
    for c in &calls {
        let step =
            parent(c).unwrap_or_else(|| panic!("{:?} has no parent:\n{listing}", c.span.name));
        assert!(
            step.span.name.starts_with("step "),
            "{:?} is inside a step, not {:?}",
            c.span.name,
            step.span.name
        );
        assert_eq!(c.attr("step"), step.attr("step"));
    }
    let served: Vec<&Received> = spans
        .iter()
        .filter(|r| r.service == "registry-svc" && r.span.name.starts_with("capstan.registry.v1."))
        .collect();
    assert!(
        !served.is_empty(),
        "the registry's spans join the trace:\n{listing}"
    );
    for s in &served {
        let call =
            parent(s).unwrap_or_else(|| panic!("{:?} has no parent:\n{listing}", s.span.name));
        assert!(
            call.span.name.starts_with("registry "),
            "{:?} is served under the pipeline's call, not {:?}",
            s.span.name,
            call.span.name
        );
        assert!(s.attr("step").is_some(), "{:?} names the step", s.span.name);
        assert_eq!(s.attr("operation_id"), Some(op.operation_id.clone()));
    }
    let sql: Vec<&Received> = spans
        .iter()
        .filter(|r| r.service == "registry-svc" && r.span.name.starts_with("sql "))
        .collect();
    assert!(!sql.is_empty(), "the registry's SQL is traced:\n{listing}");
    for q in &sql {
        let mut up = parent(q);
        while let Some(p) =
            up.filter(|p| p.service == "registry-svc" && !p.span.name.starts_with("capstan."))
        {
            up = parent(p);
        }
        assert!(
            up.is_some_and(|p| p.span.name.starts_with("capstan.registry.v1.")),
            "{:?} runs under a registry call:\n{listing}",
            q.span.name
        );
    }

    for r in &spans {
        assert_eq!(
            r.attr("request_id").as_deref(),
            Some(REQUEST_ID),
            "{} span {:?} carries the request id",
            r.service,
            r.span.name
        );
    }
    // Logs name the trace.
    let trace_hex = hex::encode(trace_id);
    assert!(
        pipeline.log_text().contains(&trace_hex),
        "the pipeline's logs carry the trace id {trace_hex}:\n{}",
        pipeline.log_text()
    );
}

/// A caller's trace that its sampler dropped (`traceparent` flags 00) stays dropped: the
/// pipeline exports nothing of the demo, and its registry calls say "not sampled", so the
/// registry does not start traces of its own for them. A sampled call afterwards shows
/// the export path works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_trace_stays_dropped_across_pipeline_and_registry() {
    let traced = Traced::start().await;
    let dropped_request = "trace-e2e-dropped";
    let op = traced
        .demo(
            &traceparent(*uuid::Uuid::new_v4().as_bytes(), [7; 8], false),
            dropped_request,
        )
        .await;
    assert!(op.steps.len() > 1, "the demo made registry calls: {op:?}");

    // A sampled call, then its span: everything exported before it has arrived too.
    let trace_id: [u8; 16] = *uuid::Uuid::new_v4().as_bytes();
    let channel = capstan_client::connect(&traced.pipeline.url(), None)
        .await
        .unwrap();
    let mut get = Request::new(pb::GetOperationRequest {
        operation_id: op.operation_id.clone(),
    });
    get.metadata_mut().insert(
        "traceparent",
        traceparent(trace_id, [9; 8], true).parse().unwrap(),
    );
    OperationsClient::new(channel)
        .get_operation(get)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while traced.receiver.of_trace(&trace_id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sampled GetOperation's span never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One more export period for the registry, whose spans would come on their own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leaked: Vec<String> = traced
        .receiver
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.attr("request_id").as_deref() == Some(dropped_request))
        .map(|r| format!("{} {:?}", r.service, r.span.name))
        .collect();
    assert!(
        leaked.is_empty(),
        "spans of a dropped trace were exported:\n{}",
        leaked.join("\n")
    );
}
