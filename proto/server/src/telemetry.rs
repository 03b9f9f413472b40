//! Logs, traces and metrics set-up.
//!
//! Traces are off unless the standard OpenTelemetry variables ask for them (see
//! [`init`]); then every span at `info` goes out over OTLP/gRPC, and calls join their
//! caller's trace through W3C `traceparent` ([`accept_trace`]).

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use opentelemetry::{
    baggage::BaggageExt,
    propagation::{Extractor, TextMapCompositePropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::SdkTracerProvider,
    Resource,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use crate::config::LogFormat;

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global `tracing` subscriber for logs only (RUST_LOG filters; default
/// `info`): what tests use; the services call [`init`].
pub fn init_tracing(format: LogFormat) {
    let builder = fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr);
    // A second call (tests starting several servers in one process) keeps the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// What [`init`] installed; keep it until the process exits: dropping it exports the
/// spans still buffered.
#[must_use = "dropping it stops exporting traces"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take() {
            if let Err(e) = provider.shutdown() {
                tracing::error!(error = %e, "cannot export the last spans");
            }
        }
    }
}

/// Whether the standard OpenTelemetry variables ask for traces: an OTLP endpoint is set
/// (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or
/// `OTEL_TRACES_EXPORTER=otlp`, and neither `OTEL_SDK_DISABLED=true` nor
/// `OTEL_TRACES_EXPORTER=none` turns them off. Other exporters and protocols are refused.
fn traces_wanted(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<bool> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    let exporter = set("OTEL_TRACES_EXPORTER");
    match exporter.as_deref().map(str::trim) {
        Some("none") => return Ok(false),
        None | Some("otlp") => {}
        Some(other) => anyhow::bail!(
            "OTEL_TRACES_EXPORTER={other:?}: only otlp (over gRPC) or none is supported"
        ),
    }
    let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_some();
    if !(endpoint || exporter.is_some()) {
        return Ok(false);
    }
    for key in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = set(key).filter(|p| p.trim() != "grpc") {
            anyhow::bail!("{key}={p:?}: traces are exported over OTLP/gRPC only (grpc)");
        }
    }
    Ok(true)
}

/// Installs the global `tracing` subscriber: logs on stderr as [`init_tracing`] does, and,
/// when the standard `OTEL_*` variables ask for them ([`traces_wanted`]), spans exported
/// over OTLP/gRPC as `service` (unless `OTEL_SERVICE_NAME` names it), sampled as
/// `OTEL_TRACES_SAMPLER` says, with W3C trace context and baggage propagated. Must run
/// inside the Tokio runtime (the exporter's channel lives there).
pub fn init(format: LogFormat, service: &str) -> anyhow::Result<Telemetry> {
    if !traces_wanted(|k| std::env::var(k).ok())? {
        init_tracing(format);
        return Ok(Telemetry { traces: None });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("cannot set up the OTLP trace exporter (OTEL_EXPORTER_OTLP_*)")?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| service.to_string());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build();
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    let tracer = provider.tracer(service.to_string());
    // Spans go out at `info` whatever RUST_LOG keeps of the logs (the demo logs errors only).
    // Every request makes spans whether or not they are sampled, so the layer skips what a
    // span costs on each enter and exit: busy/idle timings and thread attributes, and
    // activating the OpenTelemetry context (propagation reads it from the `tracing` span).
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_context_activation(false)
        .with_filter(EnvFilter::new(SPAN_FILTER));
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(spans)
        .with(logs.with_filter(log_filter()))
        .try_init()
        .context("a tracing subscriber is installed already")?;
    tracing::info!(service, "exporting traces over OTLP");
    Ok(Telemetry {
        traces: Some(provider),
    })
}

/// The spans exported: ours and the SQL driver's at `info`, nothing of the HTTP/2 stack.
const SPAN_FILTER: &str = "info,h2=off,hyper=off,tower=off,tonic=off";

/// Records the trace id of `span` in its `trace_id` field (declared empty), so the logs
/// of everything under it name the trace; nothing when no trace is recorded.
pub fn record_trace_id(span: &Span) {
    let cx = span.context();
    let trace = cx.span().span_context().clone();
    if trace.is_valid() && trace.is_sampled() {
        span.record("trace_id", tracing::field::display(trace.trace_id()));
    }
}

/// Makes `span` (created with `parent: None`) a child of the current span in the trace,
/// without tying its lifetime to it: work that outlives the call that started it (an
/// operation after its StartDemo returned) joins the call's trace.
pub fn continue_trace(span: &Span) {
    let parent = Span::current().context();
    if parent.span().span_context().is_valid() {
        if let Err(e) = span.set_parent(parent) {
            tracing::debug!(error = %e, "cannot continue the trace");
        }
    }
    record_trace_id(span);
}

/// The baggage keys a pipeline sends with the registry calls of an operation's step
/// (W3C `baggage`), so that the registry's spans name them too.
pub const OPERATION_BAGGAGE: &str = "capstan.operation_id";
pub const STEP_BAGGAGE: &str = "capstan.step";

/// The operation and step a caller said it works for (labels for spans, nothing more).
#[derive(Debug, Default)]
pub struct CallerLabels {
    pub operation_id: Option<Arc<str>>,
    pub step: Option<Arc<str>>,
}

/// Longest baggage value taken as a label: a caller cannot blow up our spans.
const MAX_LABEL_CHARS: usize = 128;

/// Makes `span` a child of the caller's trace, as the call's headers carry it (W3C
/// `traceparent`), and returns the labels of its baggage. Nothing without a tracer.
pub fn accept_trace(span: &Span, headers: &http::HeaderMap) -> CallerLabels {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let label = |key: &str| {
        cx.baggage()
            .get(key)
            .map(|v| v.as_str())
            .filter(|v| !v.is_empty() && v.chars().count() <= MAX_LABEL_CHARS)
            .map(Arc::from)
    };
    let labels = CallerLabels {
        operation_id: label(OPERATION_BAGGAGE),
        step: label(STEP_BAGGAGE),
    };
    if cx.span().span_context().is_valid() {
        if let Err(e) = span.set_parent(cx) {
            tracing::debug!(error = %e, "cannot join the caller's trace");
        }
    }
    record_trace_id(span);
    labels
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Bucket bounds of every `…_seconds` histogram: from a cached read (about 100 µs) to a
/// whole demo (tens of seconds). Buckets, not summaries, so that dashboards aggregate
/// quantiles over replicas.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The Prometheus exporter as both services configure it.
pub fn prometheus() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .expect("the bucket list is not empty")
}

/// Serves Prometheus `/metrics` on `addr`.
pub fn init_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    prometheus()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    tracing::info!(%addr, "metrics endpoint listening");
    Ok(())
}

/// One unit of a gauge of things in progress (open watch streams), given back when
/// dropped, however the holder ends.
pub struct InFlight(metrics::Gauge);

impl InFlight {
    pub fn enter(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
