//! Server bootstrap shared by both services.

use std::{
    collections::HashSet,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    service::Routes,
    transport::{server::TcpIncoming, Identity, Server, ServerTlsConfig},
};
use tower::{Layer, Service};
use tower_http::classify::{
    ClassifiedResponse, ClassifyEos, ClassifyResponse, GrpcEosErrorsAsFailures,
    GrpcErrorsAsFailures, GrpcFailureClass,
};

pub use tonic_health::server::{health_reporter, HealthReporter};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    auth::{AuthLayer, Verifier},
    config::{AuthMode, CommonArgs},
    telemetry,
};

/// Everything `serve` needs besides the services themselves.
#[derive(Clone)]
pub struct ServeOptions {
    pub verifier: Verifier,
    pub max_concurrent_streams: u32,
    pub max_connection_age: Option<Duration>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub shutdown_deadline: Duration,
    /// Services reflection advertises (with health); empty: every service described in
    /// the descriptor sets, which include the other service's packages.
    pub advertise: Vec<String>,
    /// Paths served besides the methods of the built-in descriptor sets (a test's own
    /// service), for their metrics labels (see [`ObserveLayer`]).
    pub also_served: Vec<String>,
}

impl ServeOptions {
    pub fn from_args(args: &CommonArgs) -> anyhow::Result<Self> {
        let verifier = match args.auth {
            AuthMode::Disabled => Verifier::disabled(),
            AuthMode::Jwt => Verifier::from_settings(args.jwt_secret_file.as_deref(), &args.oidc)?,
        };
        Ok(Self {
            verifier,
            max_concurrent_streams: args.max_concurrent_streams,
            max_connection_age: (args.max_connection_age_seconds > 0)
                .then(|| Duration::from_secs(args.max_connection_age_seconds)),
            tls: args.tls_cert_file.clone().zip(args.tls_key_file.clone()),
            shutdown_deadline: args.shutdown_deadline(),
            advertise: Vec::new(),
            also_served: Vec::new(),
        })
    }

    /// Options for in-process servers in tests.
    pub fn for_tests(verifier: Verifier) -> Self {
        Self {
            verifier,
            max_concurrent_streams: 1024,
            max_connection_age: None,
            tls: None,
            shutdown_deadline: Duration::from_secs(5),
            advertise: Vec::new(),
            also_served: Vec::new(),
        }
    }
}

/// Binds `addr`; port 0 picks a free port, which is logged.
/// The largest HTTP/2 frame clients may send. At the 16 KiB default an upload arrives in
/// 64 frames per MiB, each parsed, flow-controlled and handed on by itself: 256 KiB frames
/// cut the server's CPU per uploaded GB by about a third (1.75 → 1.2 s, 256 MiB uploads
/// 590 → 840–950 MB/s), the client's by a quarter, with peak memory unchanged. 1 MiB
/// frames gained no more and held up to 18 MiB more per upload.
const FRAME_BYTES: u32 = 256 << 10;

pub async fn bind(addr: SocketAddr, service: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(service, listen = %local, "gRPC listening");
    Ok(listener)
}

/// Every descriptor a client may meet, besides reflection's own (its builder adds them):
/// ours, health, and the `google.rpc` error details that carry field violations.
const DESCRIPTOR_SETS: [&[u8]; 3] = [
    capstan_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_types::pb::FILE_DESCRIPTOR_SET,
];

fn reflection(advertise: &[String]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure();
    for set in DESCRIPTOR_SETS {
        builder = builder.register_encoded_file_descriptor_set(set);
    }
    if !advertise.is_empty() {
        for always in [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            builder = builder.with_service_name(always);
        }
        for name in advertise {
            builder = builder.with_service_name(name.clone());
        }
    }
    builder
}

/// Adds reflection (v1 and v1alpha, since grpcurl and other tools differ) to `routes`.
pub fn with_reflection(routes: Routes, advertise: &[String]) -> anyhow::Result<Routes> {
    let v1 = reflection(advertise).build_v1()?;
    let v1alpha = reflection(advertise).build_v1alpha()?;
    Ok(routes.add_service(v1).add_service(v1alpha))
}

/// Serves `routes` (plus reflection) on `listener` until `shutdown` fires, then lets
/// in-flight calls finish. Streams must watch `shutdown` themselves to end.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    routes: Routes,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = with_reflection(routes, &options.advertise)?;
    options.verifier.warm_up();
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(options.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Large uploads stall on HTTP/2 flow control with small windows; the connection
        // window caps what one client can make the server buffer.
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .max_frame_size(Some(FRAME_BYTES));
    if let Some(age) = options.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    if let Some((cert, key)) = &options.tls {
        let identity = Identity::from_pem(
            std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?,
            std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?,
        );
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    builder
        .layer(ObserveLayer::new(&options.also_served))
        .layer(AuthLayer::new(options.verifier))
        .add_routes(routes)
        // Accepted sockets do not inherit the builder's `tcp_nodelay`; without it every
        // small response waits ~40 ms for the client's delayed ACK (Nagle).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}

/// Waits for SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    r = tokio::signal::ctrl_c() => log_ctrl_c(r),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                log_ctrl_c(tokio::signal::ctrl_c().await);
            }
        }
    }
    #[cfg(not(unix))]
    log_ctrl_c(tokio::signal::ctrl_c().await);
}

fn log_ctrl_c(r: std::io::Result<()>) {
    match r {
        Ok(()) => tracing::info!("SIGINT received"),
        Err(e) => tracing::error!(error = %e, "cannot listen for SIGINT"),
    }
}

/// Runs `server` until a signal, then cancels `shutdown` and waits at most `deadline`
/// for it to drain: open streams must not hold the process forever.
pub async fn run_until_signal(
    server: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    shutdown: CancellationToken,
    deadline: Duration,
) -> anyhow::Result<()> {
    let mut task = tokio::spawn(server);
    tokio::select! {
        res = &mut task => return res.context("server task panicked")?,
        _ = signal() => {}
    }
    tracing::info!(deadline_secs = deadline.as_secs(), "draining");
    shutdown.cancel();
    match tokio::time::timeout(deadline, task).await {
        Ok(res) => {
            res.context("server task panicked")??;
            tracing::info!("stopped cleanly");
        }
        Err(_) => tracing::warn!("shutdown deadline passed; exiting with calls still open"),
    }
    Ok(())
}

/// What the work under way belongs to, for its spans, its logs and the calls it makes on:
/// the request id, and for an operation's work its id and step.
#[derive(Debug, Clone)]
pub struct CallScope {
    pub request_id: Arc<str>,
    pub operation_id: Option<Arc<str>>,
    pub step: Option<Arc<str>>,
    /// Set when the sampler dropped the trace of the call this work belongs to: none of
    /// its spans goes to OpenTelemetry, and its onward calls carry this context (sampled
    /// flag clear) so that their callees drop them too.
    pub dropped_trace: Option<opentelemetry::trace::SpanContext>,
}

impl CallScope {
    /// Its labels, for a span's fields: the request id, the operation id and the step,
    /// empty where unset.
    fn labels(&self) -> [&str; 3] {
        [
            &self.request_id,
            self.operation_id.as_deref().unwrap_or(""),
            self.step.as_deref().unwrap_or(""),
        ]
    }
}

tokio::task_local! {
    static CALL: CallScope;
}

/// The scope of the work under way: a call's (set while its handler runs, and in the
/// streams it wraps with [`with_request_id`]), or one [`within`] set; `None` outside.
pub fn current() -> Option<CallScope> {
    CALL.try_with(Clone::clone).ok()
}

/// A span only traces need (a statement's, an onward call's), made by `f` from the labels
/// of the work under way (request id, operation id, step; empty where unset). None
/// while no trace is exported, or when the sampler dropped this call's trace: the logs
/// have the call's own span and labels, and such spans are made on every query.
pub fn trace_span(mut f: impl FnMut([&str; 3]) -> tracing::Span) -> tracing::Span {
    if !telemetry::exporting() {
        return tracing::Span::none();
    }
    CALL.try_with(|s| match s.dropped_trace {
        Some(_) => tracing::Span::none(),
        None => f(s.labels()),
    })
    .unwrap_or_else(|_| f(["", "", ""]))
}

/// Whether the work under way belongs to a call whose trace the sampler dropped.
pub fn trace_dropped() -> bool {
    CALL.try_with(|c| c.dropped_trace.is_some())
        .unwrap_or(false)
}

/// The id of the call being served: the client's `x-request-id`, else one made up when
/// the call arrived (see [`current`]); `None` outside a call.
pub fn request_id() -> Option<Arc<str>> {
    CALL.try_with(|c| c.request_id.clone()).ok()
}

/// Runs `work` in `scope`: work that outlives its call (an operation's execution) keeps
/// the call's request id for its logs, spans and onward calls.
pub fn within<F: Future>(scope: CallScope, work: F) -> impl Future<Output = F::Output> {
    CALL.scope(scope, work)
}

/// Keeps the scope of the handler that makes it for every poll of a response stream: a
/// stream is polled after its handler returned, where errors it yields become statuses
/// (which name the request id of an internal error). Unary calls need nothing.
pub fn with_request_id<S>(stream: S) -> WithRequestId<S> {
    WithRequestId {
        scope: current(),
        stream,
    }
}

/// See [`with_request_id`].
pub struct WithRequestId<S> {
    scope: Option<CallScope>,
    stream: S,
}

impl<S: futures::Stream + Unpin> futures::Stream for WithRequestId<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        match &this.scope {
            Some(scope) => {
                CALL.sync_scope(scope.clone(), || Pin::new(&mut this.stream).poll_next(cx))
            }
            None => Pin::new(&mut this.stream).poll_next(cx),
        }
    }
}

/// Gives every call a `grpc` span (method, request id, the caller's trace when its
/// `traceparent` names one) lasting to the end of its response, and records its count by
/// final status and its duration as Prometheus metrics.
///
/// The final status is what tower-http's gRPC classifier reads: the headers of a
/// trailers-only error, else the trailers after the last message, so an error a stream
/// sends after some messages counts with its own code. A response the client drops before
/// its end counts as `CANCELLED`, what the client saw.
///
/// Metrics label a call by its method only when this server may serve it (a method of
/// [`DESCRIPTOR_SETS`], of reflection, or of `also`); any other path is `unknown`. A label per path a
/// client makes up would grow the metrics, and every scrape, without bound.
#[derive(Clone)]
pub struct ObserveLayer {
    methods: Arc<HashSet<Arc<str>>>,
    unknown: Arc<str>,
}

impl ObserveLayer {
    pub fn new(also: &[String]) -> Self {
        let reflection = [
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods: HashSet<Arc<str>> = also.iter().map(|m| m.as_str().into()).collect();
        for set in DESCRIPTOR_SETS.into_iter().chain(reflection) {
            let files = match prost_types::FileDescriptorSet::decode(set) {
                Ok(set) => set.file,
                Err(e) => {
                    tracing::error!(error = %e, "a built-in descriptor set does not decode; its methods count as unknown");
                    continue;
                }
            };
            for file in files {
                for service in &file.service {
                    let name = match file.package() {
                        "" => service.name().to_string(),
                        p => format!("{p}.{}", service.name()),
                    };
                    for method in &service.method {
                        methods.insert(format!("/{name}/{}", method.name()).into());
                    }
                }
            }
        }
        Self {
            methods: Arc::new(methods),
            unknown: "unknown".into(),
        }
    }

    /// The metrics label of a call to `path`.
    fn label(&self, path: &str) -> Arc<str> {
        self.methods.get(path).unwrap_or(&self.unknown).clone()
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, E> Service<http::Request<Body>> for Observe<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = E> + Send + 'static,
    S::Future: Send + 'static,
    E: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = E;
    type Future = BoxFuture<Result<http::Response<Body>, E>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = req.uri().path();
        let request_id: Arc<str> = match req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) => id.into(),
            None => uuid::Uuid::new_v4().to_string().into(),
        };
        // The caller's trace, sampled now, and, from a pipeline, the operation and step
        // it works for.
        let trace = telemetry::accept_trace(req.headers(), method);
        let scope = CallScope {
            request_id,
            operation_id: trace.labels.operation_id.clone(),
            step: trace.labels.step.clone(),
            dropped_trace: trace.dropped(),
        };
        // Made inside the scope, so that a dropped trace keeps it from OpenTelemetry.
        let span = CALL.sync_scope(scope.clone(), || {
            tracing::info_span!(
                "grpc",
                otel.name = method.trim_start_matches('/'),
                otel.kind = "server",
                rpc.system = "grpc",
                method = %method,
                request_id = %scope.request_id,
                operation_id = scope.operation_id.as_deref(),
                step = scope.step.as_deref(),
                trace_id = tracing::field::Empty,
            )
        });
        trace.join(&span);
        let call = Call {
            method: self.layer.label(method),
            start: Instant::now(),
            span: span.clone(),
        };
        let fut = CALL.scope(scope, self.inner.call(req));
        Box::pin(
            async move {
                match fut.await {
                    Ok(response) => Ok(call.follow(response)),
                    Err(e) => {
                        call.finish("TRANSPORT");
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// One call being observed, until its response ends.
struct Call {
    /// Its metrics label (see [`ObserveLayer`]).
    method: Arc<str>,
    start: Instant,
    /// Kept until the response ends, so the span covers the whole stream.
    span: tracing::Span,
}

impl Call {
    /// Records the call now when its headers carry the final status, else when its body
    /// ends (see [`ObservedBody`]).
    fn follow(self, response: http::Response<Body>) -> http::Response<Body> {
        match GrpcErrorsAsFailures::new().classify_response(&response) {
            ClassifiedResponse::Ready(class) => {
                self.finish(status_label(class));
                response
            }
            ClassifiedResponse::RequiresEos(eos) => response.map(|inner| {
                Body::new(ObservedBody {
                    inner,
                    end: Some((eos, self)),
                })
            }),
        }
    }

    fn finish(self, code: &'static str) {
        let elapsed = self.start.elapsed();
        // An attribute of the trace only: recording a field would re-format the span's
        // log fields (in JSON, parse and re-serialize them) on every call.
        self.span.set_attribute("code", code);
        let _entered = self.span.enter();
        tracing::debug!(code, elapsed_us = elapsed.as_micros() as u64, "call");
        metrics::counter!("capstan_grpc_requests_total", "method" => self.method.clone(), "code" => code).increment(1);
        metrics::histogram!("capstan_grpc_request_duration_seconds", "method" => self.method)
            .record(elapsed.as_secs_f64());
    }
}

/// The name of a classified status: `OK`, a gRPC code's name, or `TRANSPORT` when the
/// response failed below gRPC.
fn status_label(class: Result<(), GrpcFailureClass>) -> &'static str {
    match class {
        Ok(()) => "OK",
        Err(GrpcFailureClass::Code(code)) => code_name(tonic::Code::from_i32(code.get())),
        Err(GrpcFailureClass::Error(_)) => "TRANSPORT",
    }
}

/// A response body that records its call when it ends: at the trailers, at its end, at
/// an error, or when it is dropped unfinished.
struct ObservedBody {
    inner: Body,
    end: Option<(GrpcEosErrorsAsFailures, Call)>,
}

impl http_body::Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        // Data frames are not the end; trailers, an error or the body's end are.
        let end = match &frame {
            Some(Ok(f)) => f.trailers_ref().map(|t| Ok(Some(t))),
            Some(Err(e)) => Some(Err(e)),
            None => Some(Ok(None)),
        };
        if let Some(end) = end {
            let Some((eos, call)) = self.end.take() else {
                return Poll::Ready(frame);
            };
            let class = match end {
                Ok(trailers) => eos.classify_eos(trailers),
                Err(e) => Err(eos.classify_error(e)),
            };
            call.finish(status_label(class));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some((eos, call)) = self.end.take() {
            let code = if http_body::Body::is_end_stream(&self.inner) {
                status_label(eos.classify_eos(None))
            } else {
                "CANCELLED"
            };
            call.finish(code);
        }
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[test]
    fn only_served_methods_get_a_label_of_their_own() {
        let observe = ObserveLayer::new(&["/capstan.test.Streams/Complete".into()]);
        for served in [
            "/capstan.registry.v1.RegistryService/GetAlias",
            "/capstan.pipeline.v1.OperationsService/WatchOperation",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/capstan.test.Streams/Complete",
        ] {
            assert_eq!(&*observe.label(served), served);
        }
        for made_up in [
            "/capstan.registry.v1.RegistryService/NoSuchMethod",
            "/capstan.registry.v1.RegistryService/WatchOperation",
            "/x/y",
            "",
            "/capstan.registry.v1.RegistryService/GetAlias/",
        ] {
            assert_eq!(&*observe.label(made_up), "unknown", "{made_up:?}");
        }
    }

    #[tokio::test]
    async fn the_request_id_reaches_the_handler_and_the_streams_it_wraps() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let handler = tower::service_fn(move |_: http::Request<Body>| {
            let tx = tx.take().expect("one call");
            async move {
                let id = request_id().expect("a request id in the handler");
                // Polled later, outside the handler: what a response stream meets.
                let stream = with_request_id(futures::stream::poll_fn(|_| {
                    Poll::Ready(Some(request_id().map(|id| id.to_string())))
                }));
                let _ = tx.send(stream);
                let mut response = http::Response::new(Body::empty());
                response
                    .headers_mut()
                    .insert("handler-saw", id.to_string().parse().unwrap());
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut service = ObserveLayer::new(&[]).layer(handler);
        let request = http::Request::builder()
            .uri("/capstan.test/Call")
            .header("x-request-id", "req-42")
            .body(Body::empty())
            .unwrap();
        let response = service.call(request).await.unwrap();
        assert_eq!(response.headers()["handler-saw"], "req-42");
        assert!(request_id().is_none(), "no request id outside a call");
        let mut stream = rx.await.unwrap();
        assert_eq!(stream.next().await, Some(Some("req-42".to_string())));
    }
}
