//! The RPC metrics of `serve` count each call by its final status and time it to the end
//! of its response: a real server on port 0 serves scripted server streams to a real
//! client, and the Prometheus exporter's rendering is read back.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
    time::Duration,
};

use capstan_server::{
    auth::Verifier,
    serve::{self, ServeOptions},
};
use futures::{stream::BoxStream, StreamExt};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body, codegen::http::uri::PathAndQuery, server::NamedService, service::Routes,
    transport::Channel, Code, Request, Response, Status,
};
use tonic_prost::ProstCodec;

/// How long every script waits before its end, so its duration has a known floor.
const PAUSE: Duration = Duration::from_millis(300);

/// What a method of the test service streams (its messages are `google.protobuf.Empty`).
#[derive(Clone, Copy)]
enum Script {
    /// Two messages, the pause, then `DATA_LOSS` in the trailers.
    FailMidway,
    /// Two messages, the pause, then the end (`OK`).
    Complete,
    /// One message, then nothing until the client gives up.
    Hang,
    /// Refused before any message: `NOT_FOUND` in the headers (trailers-only).
    Refuse,
}

impl Script {
    fn of(path: &str) -> Option<Self> {
        Some(match path.rsplit('/').next()? {
            "FailMidway" => Self::FailMidway,
            "Complete" => Self::Complete,
            "Hang" => Self::Hang,
            "Refuse" => Self::Refuse,
            _ => return None,
        })
    }

    fn stream(self) -> BoxStream<'static, Result<(), Status>> {
        let two = futures::stream::iter([Ok(()), Ok(())]);
        match self {
            Self::FailMidway => two
                .chain(futures::stream::once(async {
                    tokio::time::sleep(PAUSE).await;
                    Err(Status::data_loss("the rest of the stream is gone"))
                }))
                .boxed(),
            Self::Complete => two
                .chain(
                    futures::stream::once(tokio::time::sleep(PAUSE))
                        .filter_map(|()| async { None::<Result<(), Status>> }),
                )
                .boxed(),
            Self::Hang => futures::stream::once(async { Ok(()) })
                .chain(futures::stream::pending())
                .boxed(),
            Self::Refuse => unreachable!("refused before streaming"),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tonic::server::ServerStreamingService<()> for Script {
    type Response = ();
    type ResponseStream = BoxStream<'static, Result<(), Status>>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let script = *self;
        Box::pin(async move {
            match script {
                Script::Refuse => Err(Status::not_found("no such thing")),
                s => Ok(Response::new(s.stream())),
            }
        })
    }
}

/// `capstan.test.Streams`: each method plays the [`Script`] of its name.
#[derive(Clone)]
struct Streams;

impl NamedService for Streams {
    const NAME: &'static str = "capstan.test.Streams";
}

impl tower::Service<http::Request<Body>> for Streams {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let Some(script) = Script::of(req.uri().path()) else {
                return Ok(Status::unimplemented("no such method").into_http());
            };
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<(), ()>::default());
            Ok(grpc.server_streaming(script, req).await)
        })
    }
}

/// The process's recorder (a test binary has one), as the services configure it.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        capstan_server::telemetry::prometheus()
            .install_recorder()
            .expect("the only recorder of this test binary")
    })
}

/// The value of the sample `name{…method="/capstan.test.Streams/{method}"…}` whose labels
/// also include `label` (such as `code="OK"`), if the exporter has it.
fn sample(name: &str, method: &str, label: &str) -> Option<f64> {
    sample_labelled(name, &format!("/capstan.test.Streams/{method}"), label)
}

/// The value of the sample `name{…method="{method}"…}` whose labels also include `label`.
fn sample_labelled(name: &str, method: &str, label: &str) -> Option<f64> {
    let method = format!("method=\"{method}\"");
    recorder().render().lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, labels) = series.split_once('{')?;
        (metric == name && labels.contains(&method) && labels.contains(label))
            .then(|| value.parse().ok())?
    })
}

async fn start() -> (Channel, CancellationToken) {
    recorder();
    let listener = serve::bind("127.0.0.1:0".parse().unwrap(), "test")
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(serve::serve(
        listener,
        ServeOptions {
            also_served: ["FailMidway", "Complete", "Hang", "Refuse"]
                .map(|m| format!("/capstan.test.Streams/{m}"))
                .into(),
            ..ServeOptions::for_tests(Verifier::disabled())
        },
        Routes::new(Streams),
        shutdown.clone(),
    ));
    let channel = capstan_client::endpoint(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, shutdown)
}

/// Calls `method` and reads its stream to the end: the messages, then the final status.
async fn call(channel: &Channel, method: &str) -> (usize, Code) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = PathAndQuery::try_from(format!("/capstan.test.Streams/{method}")).unwrap();
    let codec = ProstCodec::<(), ()>::default();
    let mut stream = match grpc.server_streaming(Request::new(()), path, codec).await {
        Ok(r) => r.into_inner(),
        Err(s) => return (0, s.code()),
    };
    let mut messages = 0;
    loop {
        match stream.message().await {
            Ok(Some(())) => messages += 1,
            Ok(None) => return (messages, Code::Ok),
            Err(s) => return (messages, s.code()),
        }
    }
}

/// Waits for the call's record: the server records it as its response ends, which the
/// client may see a moment before.
async fn count(method: &str, code: &str) -> f64 {
    let label = format!("code=\"{code}\"");
    for _ in 0..100 {
        if let Some(n) = sample("capstan_grpc_requests_total", method, &label) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no capstan_grpc_requests_total for {method} with {label}:\n{}",
        recorder().render()
    );
}

#[tokio::test]
async fn a_stream_failed_midway_counts_with_its_status_and_its_whole_duration() {
    let (channel, shutdown) = start().await;
    assert_eq!(call(&channel, "FailMidway").await, (2, Code::DataLoss));
    assert_eq!(count("FailMidway", "DATA_LOSS").await, 1.0);
    assert_eq!(
        sample("capstan_grpc_requests_total", "FailMidway", "code=\"OK\""),
        None,
        "the OK headers of the stream are not its status"
    );
    let seconds = sample(
        "capstan_grpc_request_duration_seconds_sum",
        "FailMidway",
        "",
    )
    .expect("a duration");
    assert!(
        seconds >= PAUSE.as_secs_f64(),
        "timed to the trailers, after the pause: {seconds} s"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn completed_refused_and_abandoned_calls_count_as_the_client_saw_them() {
    let (channel, shutdown) = start().await;
    assert_eq!(call(&channel, "Complete").await, (2, Code::Ok));
    assert_eq!(count("Complete", "OK").await, 1.0);
    let seconds =
        sample("capstan_grpc_request_duration_seconds_sum", "Complete", "").expect("a duration");
    assert!(
        seconds >= PAUSE.as_secs_f64(),
        "timed to the end: {seconds} s"
    );

    assert_eq!(call(&channel, "Refuse").await, (0, Code::NotFound));
    assert_eq!(count("Refuse", "NOT_FOUND").await, 1.0);

    // The client reads one message and hangs up: the server's body is dropped unfinished.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/capstan.test.Streams/Hang");
    let mut stream = grpc
        .server_streaming(Request::new(()), path, ProstCodec::<(), ()>::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap(), Some(()));
    drop(stream);
    assert_eq!(count("Hang", "CANCELLED").await, 1.0);
    shutdown.cancel();
}

#[tokio::test]
async fn a_made_up_method_counts_as_unknown_not_as_a_label_of_its_own() {
    let (channel, shutdown) = start().await;
    assert_eq!(call(&channel, "Invented").await, (0, Code::Unimplemented));
    let mut counted = None;
    for _ in 0..100 {
        counted = sample_labelled(
            "capstan_grpc_requests_total",
            "unknown",
            "code=\"UNIMPLEMENTED\"",
        );
        if counted.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rendered = recorder().render();
    assert_eq!(counted, Some(1.0), "{rendered}");
    assert!(
        !rendered.contains("Invented"),
        "a path the client made up is no label:\n{rendered}"
    );
    shutdown.cancel();
}
