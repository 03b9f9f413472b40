//! What a call carries besides its message: the caller's trace context (W3C
//! `traceparent`, and `baggage`) and request id, so that the server's spans and logs join
//! the caller's trace.

use opentelemetry::{
    baggage::BaggageExt,
    propagation::Injector,
    trace::{SpanContext, TraceContextExt},
    KeyValue,
};
use tonic::{
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    service::Interceptor,
    Request, Status,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Adds the current span's trace context, `baggage` entries and `x-request-id` to each
/// call it intercepts. The trace context is the one current when the call is made (wrap
/// the call's future in its span); without a tracer installed, none is sent.
#[derive(Clone, Debug, Default)]
pub struct Propagate {
    request_id: Option<MetadataValue<tonic::metadata::Ascii>>,
    baggage: Vec<KeyValue>,
    dropped_trace: Option<SpanContext>,
}

impl Propagate {
    /// `request_id` is dropped when it cannot travel as a header value.
    pub fn new(request_id: Option<&str>) -> Self {
        Self {
            request_id: request_id.and_then(|id| id.parse().ok()),
            ..Self::default()
        }
    }

    /// Sends `key=value` as W3C baggage (when a tracer is installed).
    pub fn with_baggage(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.baggage.push(KeyValue::new(key, value.into()));
        self
    }

    /// Sends `trace` (its sampled flag clear) when no span carries a trace: the work
    /// under way belongs to a call whose trace the sampler dropped, and the callee must
    /// drop its part too rather than start a trace of its own.
    pub fn with_dropped_trace(mut self, trace: SpanContext) -> Self {
        self.dropped_trace = Some(trace);
        self
    }
}

impl Interceptor for Propagate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let mut cx = tracing::Span::current().context();
        if let Some(dropped) = &self.dropped_trace {
            if !cx.span().span_context().is_valid() {
                cx = cx.with_remote_span_context(dropped.clone());
            }
        }
        if !self.baggage.is_empty() {
            cx = cx.with_baggage(self.baggage.clone());
        }
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut Metadata(request.metadata_mut()))
        });
        if let Some(id) = &self.request_id {
            request.metadata_mut().insert("x-request-id", id.clone());
        }
        Ok(request)
    }
}

struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        match (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            (Ok(key), Ok(value)) => {
                self.0.insert(key, value);
            }
            _ => tracing::debug!(key, "trace context entry is no header; not sent"),
        }
    }
}
