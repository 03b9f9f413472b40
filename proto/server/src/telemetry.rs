//! Logs, traces and metrics set-up.
//!
//! Traces are off unless the standard OpenTelemetry variables ask for them (see
//! [`init`]); then every span at `info` goes out over OTLP/gRPC, and calls join their
//! caller's trace through W3C `traceparent` ([`accept_trace`]). A call's trace is sampled
//! when the call arrives, before its span exists: the spans of a call the sampler drops
//! never reach OpenTelemetry, so sampled-off tracing costs a request almost nothing.

use std::{
    cell::RefCell,
    io::IsTerminal,
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use opentelemetry::{
    baggage::BaggageExt,
    propagation::{Extractor, TextMapCompositePropagator},
    trace::{
        Link, SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceId, TracerProvider as _,
    },
    KeyValue,
};
use opentelemetry_sdk::{
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{
        Config, IdGenerator, RandomIdGenerator, SamplingDecision, SamplingResult,
        SdkTracerProvider, ShouldSample,
    },
    Resource,
};
use tracing::{
    field::{Field, Visit},
    level_filters::LevelFilter,
    span, Span,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    field::{RecordFields, VisitOutput},
    filter::{dynamic_filter_fn, FilterExt},
    fmt::{
        self,
        format::{DefaultFields, DefaultVisitor, JsonFields, JsonVisitor, Writer},
        FormatFields, FormattedFields,
    },
    layer::SubscriberExt,
    util::SubscriberInitExt,
    EnvFilter, Layer,
};

use crate::{config::LogFormat, serve};

/// Fields that are OpenTelemetry attributes only, left out of the logs: the span's name
/// and `method` say the same.
const TRACE_ONLY_FIELDS: [&str; 3] = ["otel.", "rpc.", "db."];

/// How the logs write span and event fields: as `tracing-subscriber` does (`key=value`
/// or JSON), without the trace-only fields and without empty labels. Every span's fields
/// are formatted when it opens, whether or not anything is logged under it, so this is
/// most of what logging costs a request.
struct LogFields<F>(F);

/// Passes a visitor every field the logs keep.
struct LogVisitor<V>(V);

impl<V: Visit> Visit for LogVisitor<V> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if kept(field) {
            self.0.record_debug(field, value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if kept(field) && !value.is_empty() {
            self.0.record_str(field, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if kept(field) {
            self.0.record_error(field, value);
        }
    }
}

fn kept(field: &Field) -> bool {
    let name = field.name();
    !TRACE_ONLY_FIELDS.iter().any(|p| name.starts_with(p))
}

impl<'w> FormatFields<'w> for LogFields<DefaultFields> {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let mut v = LogVisitor(DefaultVisitor::new(writer, true));
        fields.record(&mut v);
        v.0.finish()
    }
}

impl<'w> FormatFields<'w> for LogFields<JsonFields> {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut v = LogVisitor(JsonVisitor::new(&mut writer));
        fields.record(&mut v);
        v.0.finish()
    }

    /// Fields recorded later merge into the span's JSON object, as `JsonFields` does it.
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &span::Record<'_>,
    ) -> std::fmt::Result {
        let mut merged = FormattedFields::<JsonFields>::new(std::mem::take(&mut current.fields));
        let result = self.0.add_fields(&mut merged, fields);
        current.fields = merged.fields;
        result
    }
}

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Colours only for a person at a terminal: escape codes garble log files and
/// collectors, and styling every span's fields costs a request about a tenth of its
/// instructions.
fn ansi() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Installs the global `tracing` subscriber for logs only (RUST_LOG filters; default
/// `info`): what tests use; the services call [`init`].
pub fn init_tracing(format: LogFormat) {
    // A second call (tests starting several servers in one process) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(log_filter())
        .with(logs(format, std::io::stderr, ansi()))
        .try_init();
}

/// The log lines, in `format` to `writer`, their fields as [`LogFields`] writes them.
fn logs<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = fmt::layer().with_ansi(ansi).with_writer(writer);
    match format {
        LogFormat::Text => logs.fmt_fields(LogFields(DefaultFields::new())).boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .fmt_fields(LogFields(JsonFields::new()))
            .boxed(),
    }
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
    // The sampler OTEL_TRACES_SAMPLER names, asked once per call by `accept_trace`.
    let sampler = Config::default().sampler;
    // A second init (tests) keeps the first sampler, as it keeps the first subscriber.
    let _ = SAMPLER.set(sampler.clone());
    let provider = SdkTracerProvider::builder()
        .with_sampler(Presampled(sampler))
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
        // Nothing of a call whose trace the sampler dropped goes out: known only as it runs.
        // The hint keeps `info` the most verbose level the layer asks for.
        .with_filter(
            EnvFilter::new(SPAN_FILTER).and(
                dynamic_filter_fn(|_, _| !serve::trace_dropped())
                    .with_max_level_hint(LevelFilter::INFO),
            ),
        );
    tracing_subscriber::registry()
        .with(spans)
        .with(logs(format, std::io::stderr, ansi()).with_filter(log_filter()))
        .try_init()
        .context("a tracing subscriber is installed already")?;
    tracing::info!(service, "exporting traces over OTLP");
    Ok(Telemetry {
        traces: Some(provider),
    })
}

/// The spans exported: ours and the SQL driver's at `info`, nothing of the HTTP/2 stack.
const SPAN_FILTER: &str = "info,h2=off,hyper=off,tower=off,tonic=off";

/// The sampler [`init`] installed; unset while traces are off.
static SAMPLER: OnceLock<Box<dyn ShouldSample>> = OnceLock::new();

/// Whether [`init`] set up the export of traces.
pub fn exporting() -> bool {
    SAMPLER.get().is_some()
}

thread_local! {
    /// The decision [`accept_trace`] took for the call span this thread is starting: the
    /// tracer takes it rather than sampling again (a ratio sampler would decide twice, on
    /// two trace ids, and keep ratio² of the calls).
    static DECIDED: RefCell<Option<SamplingResult>> = const { RefCell::new(None) };
}

/// The installed sampler, deferring to the decision [`accept_trace`] took for a call.
#[derive(Clone, Debug)]
struct Presampled(Box<dyn ShouldSample>);

impl ShouldSample for Presampled {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        DECIDED.with_borrow_mut(Option::take).unwrap_or_else(|| {
            self.0
                .should_sample(parent, trace_id, name, kind, attributes, links)
        })
    }
}

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

/// What a call's headers say of its trace, and whether the sampler keeps it: see
/// [`accept_trace`].
#[derive(Debug, Default)]
pub struct CallerTrace {
    /// The operation and step the caller said it works for.
    pub labels: CallerLabels,
    decision: Decision,
}

#[derive(Debug, Default)]
enum Decision {
    /// Traces are off.
    #[default]
    Off,
    /// Sampled: the call's span joins `parent` (the caller's trace, when it sent one).
    Sampled {
        parent: opentelemetry::Context,
        result: SamplingResult,
    },
    /// Dropped: nothing of the call goes to OpenTelemetry; its onward calls carry this
    /// context, sampled flag clear, so that their callees drop them too.
    Dropped(SpanContext),
}

impl CallerTrace {
    /// The context the call's onward calls carry when its trace was dropped.
    pub fn dropped(&self) -> Option<SpanContext> {
        match &self.decision {
            Decision::Dropped(cx) => Some(cx.clone()),
            _ => None,
        }
    }

    /// Makes `span`, the call's span, a child of the caller's trace when the call is
    /// sampled, and names the trace in its logs (see [`record_trace_id`]).
    pub fn join(self, span: &Span) {
        let Decision::Sampled { parent, result } = self.decision else {
            return;
        };
        if parent.span().span_context().is_valid() {
            if let Err(e) = span.set_parent(parent) {
                tracing::debug!(error = %e, "cannot join the caller's trace");
            }
        }
        // The span starts here, on this thread, and its tracer takes this decision.
        DECIDED.with_borrow_mut(|d| *d = Some(result));
        record_trace_id(span);
        DECIDED.with_borrow_mut(|d| d.take());
    }
}

/// Reads the caller's trace (W3C `traceparent`) and baggage from a call's headers, and
/// samples the call now, before its span exists: create the span inside a
/// [`serve::CallScope`] carrying [`CallerTrace::dropped`], then [`CallerTrace::join`] it.
/// Nothing without a tracer.
pub fn accept_trace(headers: &http::HeaderMap, method: &str) -> CallerTrace {
    let Some(sampler) = SAMPLER.get() else {
        return CallerTrace::default();
    };
    // Extracting reads three headers and allocates: skip it when the caller sent none.
    let parent = if headers.contains_key("traceparent") || headers.contains_key("baggage") {
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)))
    } else {
        opentelemetry::Context::new()
    };
    let label = |key: &str| {
        parent
            .baggage()
            .get(key)
            .map(|v| v.as_str())
            .filter(|v| !v.is_empty() && v.chars().count() <= MAX_LABEL_CHARS)
            .map(Arc::from)
    };
    let labels = CallerLabels {
        operation_id: label(OPERATION_BAGGAGE),
        step: label(STEP_BAGGAGE),
    };
    let caller = parent.span().span_context().clone();
    let ids = RandomIdGenerator::default();
    let trace_id = if caller.is_valid() {
        caller.trace_id()
    } else {
        ids.new_trace_id()
    };
    let result = sampler.should_sample(
        Some(&parent),
        trace_id,
        method.trim_start_matches('/'),
        &SpanKind::Server,
        &[],
        &[],
    );
    let decision = match result.decision {
        SamplingDecision::Drop => Decision::Dropped(SpanContext::new(
            trace_id,
            ids.new_span_id(),
            TraceFlags::default(),
            false,
            result.trace_state,
        )),
        _ => Decision::Sampled { parent, result },
    };
    CallerTrace { labels, decision }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The lines a subscriber wrote.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_under_a_call_span(json: bool) -> String {
        let lines = Lines::default();
        let writer = {
            let lines = lines.clone();
            move || lines.clone()
        };
        let format = if json {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        let subscriber = tracing_subscriber::registry().with(logs(format, writer, false));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "grpc",
                otel.name = "Svc/Method",
                rpc.system = "grpc",
                method = "/Svc/Method",
                request_id = "req-1",
                step = "",
                trace_id = tracing::field::Empty,
            );
            span.record("trace_id", "abc");
            span.in_scope(|| tracing::info!(n = 1, "inside"));
        });
        let written = lines.0.lock().unwrap().clone();
        String::from_utf8(written).unwrap()
    }

    #[test]
    fn logs_leave_out_trace_only_fields_and_empty_labels() {
        let line = log_under_a_call_span(false);
        assert!(
            line.contains(r#"grpc{method="/Svc/Method" request_id="req-1" trace_id="abc"}"#),
            "{line}"
        );
        assert!(line.contains("inside n=1"), "{line}");
        for gone in ["otel.name", "rpc.system", "step"] {
            assert!(!line.contains(gone), "{gone} in {line}");
        }
    }

    #[test]
    fn json_logs_leave_them_out_and_merge_recorded_fields() {
        let line = log_under_a_call_span(true);
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(
            v["span"],
            serde_json::json!({
                "name": "grpc",
                "method": "/Svc/Method",
                "request_id": "req-1",
                "trace_id": "abc",
            }),
            "{line}"
        );
        assert_eq!(v["n"], 1, "{line}");
    }
}
