//! The knowledge step's external embedding provider: the OpenAI-compatible
//! `POST {url}/embeddings` API. When it is unconfigured, unreachable or refuses the
//! credentials it is [`Embeddings::Unusable`] with the reason (the step is skipped); any
//! other failure (an answer that is not embeddings, a server error) is an error.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::showcase::embedder::{Embedder, Embeddings};

/// Model requested from the provider.
pub const MODEL: &str = "text-embedding-3-small";
/// Limit for connecting to and hearing back from the provider.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Inputs per request, well under common provider limits.
const BATCH: usize = 64;

#[derive(Clone, PartialEq, Eq)]
pub struct HttpEmbedder {
    url: String,
    api_key: Option<String>,
}

impl HttpEmbedder {
    /// An empty `url` means "selected but not configured": every call is unusable.
    pub fn new(url: impl Into<String>, api_key: Option<String>) -> Self {
        Self {
            url: url.into(),
            api_key,
        }
    }
}

/// Keeps API keys out of logs.
impl std::fmt::Debug for HttpEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEmbedder")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[async_trait]
impl Embedder for HttpEmbedder {
    async fn embed(&self, inputs: &[String]) -> Result<Embeddings, String> {
        if self.url.trim().is_empty() {
            return Ok(Embeddings::Unusable(
                "external embedding provider is not configured (empty url)".into(),
            ));
        }
        match embed(&self.url, self.api_key.as_deref(), inputs).await {
            Ok(v) => Ok(Embeddings::Vectors(v)),
            Err(ExternalError::Skip(reason)) => Ok(Embeddings::Unusable(reason)),
            Err(ExternalError::Fail(e)) => Err(e),
        }
    }
}

enum ExternalError {
    /// The provider is not usable right now: skip the step.
    Skip(String),
    Fail(String),
}

#[derive(Serialize)]
struct EmbeddingRequest<'a> {
    input: &'a [String],
    model: &'a str,
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

async fn embed(
    url: &str,
    api_key: Option<&str>,
    inputs: &[String],
) -> Result<Vec<Vec<f32>>, ExternalError> {
    let endpoint = format!("{}/embeddings", url.trim().trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| {
            ExternalError::Fail(format!("cannot build an HTTP client: {}", error_chain(&e)))
        })?;
    let fail = |what: String| ExternalError::Fail(format!("embedding provider {endpoint} {what}"));
    let transport = |e: reqwest::Error| {
        if e.is_connect() || e.is_timeout() {
            ExternalError::Skip(format!(
                "embedding provider {endpoint} is unreachable: {}",
                error_chain(&e)
            ))
        } else {
            fail(format!("request failed: {}", error_chain(&e)))
        }
    };
    let mut vectors = Vec::with_capacity(inputs.len());
    for batch in inputs.chunks(BATCH) {
        let mut request = client.post(&endpoint).json(&EmbeddingRequest {
            input: batch,
            model: MODEL,
        });
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(ExternalError::Skip(format!(
                "embedding provider {endpoint} refused the credentials (HTTP {status})"
            )));
        }
        let body = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let snippet: String = text.chars().take(200).collect();
            return Err(fail(format!("answered HTTP {status}: {snippet}")));
        }
        let mut parsed: EmbeddingResponse = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("sent a response that is not embeddings: {e}")))?;
        parsed.data.sort_by_key(|d| d.index);
        let indices_ok = parsed.data.iter().enumerate().all(|(i, d)| d.index == i);
        if parsed.data.len() != batch.len() || !indices_ok {
            return Err(fail(format!(
                "returned {} embeddings for {} inputs",
                parsed.data.len(),
                batch.len()
            )));
        }
        vectors.extend(parsed.data.into_iter().map(|d| d.embedding));
    }
    let dims = vectors.first().map_or(0, Vec::len);
    if dims == 0
        || vectors
            .iter()
            .any(|v| v.len() != dims || v.iter().any(|x| !x.is_finite()))
    {
        return Err(fail(
            "returned empty, ragged or non-finite embeddings".into(),
        ));
    }
    Ok(vectors)
}

/// An error with its causes: reqwest's own message rarely says what actually went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::domain::showcase::{
        embedder::LocalEmbedder,
        science::knowledge::{
            embed_local, index_and_retrieve, runbooks, KnowledgeOutcome, Passage,
        },
    };

    async fn retrieve(
        embedder: &dyn Embedder,
        qs: &[&str],
        k: usize,
    ) -> Result<KnowledgeOutcome, String> {
        let queries: Vec<String> = qs.iter().map(|q| q.to_string()).collect();
        index_and_retrieve(embedder, &runbooks(), &queries, k).await
    }

    fn retrieved(outcome: KnowledgeOutcome) -> Vec<Passage> {
        match outcome {
            KnowledgeOutcome::Retrieved(p) => p,
            KnowledgeOutcome::Skipped(r) => panic!("skipped: {r}"),
        }
    }

    fn skipped(outcome: Result<KnowledgeOutcome, String>) -> String {
        match outcome {
            Ok(KnowledgeOutcome::Skipped(reason)) => reason,
            other => panic!("expected Skipped, got {other:?}"),
        }
    }

    #[test]
    fn debug_redacts_the_api_key() {
        let p = HttpEmbedder::new("http://x", Some("sk-secret".into()));
        let shown = format!("{p:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("sk-secret"),
            "{shown}"
        );
    }

    /// A request as the test server saw it.
    #[derive(Clone, Debug)]
    struct Seen {
        head: String,
        body: String,
    }

    type Responder = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

    /// A real HTTP/1.1 server on 127.0.0.1:0 answering every request with `respond`.
    async fn serve(respond: Box<Responder>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let respond: Arc<Responder> = respond.into();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (log, respond) = (log.clone(), respond.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else {
                        return;
                    };
                    let (code, body) = respond(&req);
                    log.lock().unwrap().push(req);
                    let reply = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (url, seen)
    }

    async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Seen> {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    return Some(Seen { head, body });
                }
            }
            let n = sock.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// An OpenAI-compatible embeddings endpoint that wants `Bearer sk-test` and embeds with
    /// the local embedder, answering in reverse order to exercise `index` handling.
    fn embeddings_api(seen: &Seen) -> (u16, String) {
        if !seen.head.contains("authorization: bearer sk-test") {
            return (401, r#"{"error":{"message":"Incorrect API key"}}"#.into());
        }
        let req: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
        assert_eq!(req["model"], MODEL);
        let inputs = req["input"].as_array().unwrap();
        let data: Vec<_> = inputs
            .iter()
            .enumerate()
            .rev()
            .map(|(i, text)| serde_json::json!({"object": "embedding", "index": i, "embedding": embed_local(text.as_str().unwrap())}))
            .collect();
        (
            200,
            serde_json::json!({"object": "list", "data": data, "model": MODEL}).to_string(),
        )
    }

    fn external(url: &str, key: Option<&str>) -> HttpEmbedder {
        HttpEmbedder::new(url, key.map(String::from))
    }

    #[tokio::test]
    async fn external_provider_returns_real_vectors() {
        let (url, seen) = serve(Box::new(embeddings_api)).await;
        let q = ["how do I roll back demo-production to a previous revision"];
        let got = retrieved(
            retrieve(&external(&format!("{url}/"), Some("sk-test")), &q, 3)
                .await
                .unwrap(),
        );
        // Same vectors as the local embedder, so the same passages and scores.
        let local = retrieved(retrieve(&LocalEmbedder, &q, 3).await.unwrap());
        assert_eq!(got, local);
        assert!(got[0].title.starts_with("Alias rollback"));
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(
            seen.iter()
                .all(|s| s.head.starts_with("post /v1/embeddings ")),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn external_provider_refusing_credentials_is_skipped() {
        let (url, seen) = serve(Box::new(embeddings_api)).await;
        for key in [Some("sk-wrong"), None] {
            let reason = skipped(retrieve(&external(&url, key), &["alias"], 3).await);
            assert!(reason.contains("401") && reason.contains(&url), "{reason}");
            assert!(!reason.contains("sk-wrong"));
        }
        assert_eq!(seen.lock().unwrap().len(), 2);
        let (url, _) = serve(Box::new(|_: &Seen| (403, "{}".into()))).await;
        assert!(skipped(retrieve(&external(&url, Some("k")), &["alias"], 3).await).contains("403"));
    }

    #[tokio::test]
    async fn unconfigured_or_unreachable_provider_is_skipped() {
        for url in ["", "   "] {
            let reason = skipped(retrieve(&external(url, Some("k")), &["alias"], 3).await);
            assert!(reason.contains("not configured"), "{reason}");
        }
        // A port that was just free: nothing listens there, the connection is refused.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let reason = skipped(
            retrieve(
                &external(&format!("http://127.0.0.1:{port}"), None),
                &["alias"],
                3,
            )
            .await,
        );
        assert!(reason.contains("unreachable"), "{reason}");
    }

    #[tokio::test]
    async fn silent_provider_times_out_and_is_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Accepts connections and never answers.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let started = std::time::Instant::now();
        let reason = skipped(retrieve(&external(&url, None), &["alias"], 3).await);
        assert!(reason.contains("unreachable"), "{reason}");
        let waited = started.elapsed();
        assert!(waited >= TIMEOUT && waited < TIMEOUT * 2, "{waited:?}");
    }

    #[tokio::test]
    async fn other_provider_errors_are_errors() {
        let cases: Vec<(Box<Responder>, &str)> = vec![
            (Box::new(|_: &Seen| (500, "overloaded".into())), "HTTP 500"),
            (
                Box::new(|_: &Seen| (200, "<html>".into())),
                "not embeddings",
            ),
            (
                Box::new(|_: &Seen| (200, r#"{"data":[]}"#.into())),
                "0 embeddings",
            ),
            (
                Box::new(|s: &Seen| {
                    let n = serde_json::from_str::<serde_json::Value>(&s.body).unwrap()["input"]
                        .as_array()
                        .unwrap()
                        .len();
                    let data: Vec<_> = (0..n)
                        .map(|i| serde_json::json!({"index": i, "embedding": vec![1.0; 1 + i % 2]}))
                        .collect();
                    (200, serde_json::json!({ "data": data }).to_string())
                }),
                "ragged",
            ),
        ];
        for (respond, want) in cases {
            let (url, _) = serve(respond).await;
            let err = retrieve(&external(&url, Some("k")), &["alias"], 3)
                .await
                .unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        let err = retrieve(&external("not a url", None), &["alias"], 3)
            .await
            .unwrap_err();
        assert!(err.contains("not a url"), "{err}");
    }
}
