//! Runbook retrieval: documents are cut into passages, embedded, and the passages nearest
//! to each query (cosine similarity) are returned.
//!
//! The built-in local embedder needs nothing outside the process. An external provider
//! speaks the OpenAI-compatible `POST {url}/embeddings` API; when it is unconfigured,
//! unreachable or refuses the credentials the step is skipped with the reason, since
//! optional enrichment must never fail the demo. Any other error (an answer that is not
//! embeddings, a server error) is reported as an error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Dimensions of the local hashing-trick embedding.
pub const LOCAL_DIMENSIONS: usize = 256;
/// Model requested from an external provider.
pub const EXTERNAL_MODEL: &str = "text-embedding-3-small";
/// Limit for connecting to and hearing back from an external provider.
pub const EXTERNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Inputs per external request, well under common provider limits.
const EXTERNAL_BATCH: usize = 64;
/// Longest passage, in characters: a few paragraphs, small enough to stay on one topic.
pub const MAX_PASSAGE_CHARS: usize = 700;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// `document title › section heading`, or the document title.
    pub title: String,
    pub text: String,
    /// Cosine similarity to the query it was retrieved for (the best one if several).
    pub score: f32,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Provider {
    Local,
    External {
        url: String,
        api_key: Option<String>,
    },
}

/// Keeps API keys out of logs.
impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provider::Local => f.write_str("Local"),
            Provider::External { url, api_key } => f
                .debug_struct("External")
                .field("url", url)
                .field("api_key", &api_key.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum KnowledgeOutcome {
    Retrieved(Vec<Passage>),
    /// The provider could not be used; the reason is for the step's detail.
    Skipped(String),
}

/// The project's runbooks as (title, markdown); the title is each file's first heading.
pub fn runbooks() -> Vec<(String, String)> {
    [
        include_str!("../../../../docs/runbooks/alias-rollback.md"),
        include_str!("../../../../docs/runbooks/promotion-policy.md"),
        include_str!("../../../../docs/runbooks/heartbeat-reaper.md"),
        include_str!("../../../../docs/runbooks/provisioning-failures.md"),
        include_str!("../../../../docs/runbooks/on-call.md"),
    ]
    .into_iter()
    .map(|text| {
        let title = text
            .lines()
            .find_map(|l| l.strip_prefix("# "))
            .unwrap_or("Runbook")
            .trim()
            .to_string();
        (title, text.to_string())
    })
    .collect()
}

/// Cuts `docs` into passages, embeds them and the queries with `provider`, and returns the
/// `k` best passages of every query (deduplicated, best first). Passages with no
/// similarity at all are not returned.
pub async fn index_and_retrieve(
    provider: &Provider,
    docs: &[(String, String)],
    queries: &[String],
    k: usize,
) -> Result<KnowledgeOutcome, String> {
    if let Provider::External { url, .. } = provider {
        if url.trim().is_empty() {
            return Ok(KnowledgeOutcome::Skipped(
                "external embedding provider is not configured (empty url)".into(),
            ));
        }
    }
    let passages: Vec<Passage> = docs.iter().flat_map(|(t, text)| chunk(t, text)).collect();
    if passages.is_empty() || queries.is_empty() || k == 0 {
        return Ok(KnowledgeOutcome::Retrieved(Vec::new()));
    }
    // Titles carry the topic of a passage, so they are embedded with it.
    let inputs: Vec<String> = passages
        .iter()
        .map(|p| format!("{}\n{}", p.title, p.text))
        .chain(queries.iter().cloned())
        .collect();
    let vectors = match provider {
        Provider::Local => inputs.iter().map(|t| embed_local(t)).collect(),
        Provider::External { url, api_key } => {
            match embed_external(url, api_key.as_deref(), &inputs).await {
                Ok(v) => v,
                Err(ExternalError::Skip(reason)) => return Ok(KnowledgeOutcome::Skipped(reason)),
                Err(ExternalError::Fail(e)) => return Err(e),
            }
        }
    };
    let (passage_vectors, query_vectors) = vectors.split_at(passages.len());
    Ok(KnowledgeOutcome::Retrieved(rank(
        &passages,
        passage_vectors,
        query_vectors,
        k,
    )))
}

fn rank(
    passages: &[Passage],
    passage_vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    k: usize,
) -> Vec<Passage> {
    let mut best: BTreeMap<usize, f32> = BTreeMap::new();
    for q in queries {
        let mut scored: Vec<(usize, f32)> = passage_vectors
            .iter()
            .enumerate()
            .map(|(i, p)| (i, cosine(q, p)))
            .filter(|(_, s)| *s > 0.0)
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (i, s) in scored.into_iter().take(k) {
            let e = best.entry(i).or_insert(s);
            *e = e.max(s);
        }
    }
    let mut hits: Vec<(usize, f32)> = best.into_iter().collect();
    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    hits.into_iter()
        .filter_map(|(i, score)| passages.get(i).map(|p| Passage { score, ..p.clone() }))
        .collect()
}

/// Splits a markdown document into passages along headings and paragraphs, each at most
/// `MAX_PASSAGE_CHARS` long (a longer paragraph is cut between words).
pub fn chunk(doc_title: &str, text: &str) -> Vec<Passage> {
    let mut chunker = Chunker {
        doc_title,
        section: None,
        current: String::new(),
        out: Vec::new(),
    };
    let mut paragraph = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Headings start in column one; an indented `#` is code.
        if let Some(heading) = line.strip_prefix('#') {
            chunker.paragraph(&std::mem::take(&mut paragraph));
            chunker.flush();
            let heading = heading.trim_start_matches('#').trim();
            chunker.section =
                (heading != doc_title && !heading.is_empty()).then(|| heading.to_string());
        } else if trimmed.is_empty() {
            chunker.paragraph(&std::mem::take(&mut paragraph));
        } else {
            if !paragraph.is_empty() {
                paragraph.push('\n');
            }
            paragraph.push_str(trimmed);
        }
    }
    chunker.paragraph(&paragraph);
    chunker.flush();
    chunker.out
}

struct Chunker<'a> {
    doc_title: &'a str,
    section: Option<String>,
    current: String,
    out: Vec<Passage>,
}

impl Chunker<'_> {
    fn paragraph(&mut self, p: &str) {
        if p.is_empty() {
            return;
        }
        for piece in split_words(p, MAX_PASSAGE_CHARS) {
            let len = self.current.chars().count();
            if len > 0 && len + 2 + piece.chars().count() > MAX_PASSAGE_CHARS {
                self.flush();
            }
            if !self.current.is_empty() {
                self.current.push_str("\n\n");
            }
            self.current.push_str(&piece);
        }
    }

    fn flush(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let title = match &self.section {
            Some(s) => format!("{} › {s}", self.doc_title),
            None => self.doc_title.to_string(),
        };
        self.out.push(Passage {
            title,
            text: std::mem::take(&mut self.current),
            score: 0.0,
        });
    }
}

/// Pieces of at most `max` characters, cut between words; only a word longer than `max`
/// is cut inside.
fn split_words(text: &str, max: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut len = 0;
    for word in text.split_inclusive(char::is_whitespace) {
        if len > 0 && len + word.chars().count() > max {
            pieces.push(std::mem::take(&mut current));
            len = 0;
        }
        for c in word.chars() {
            if len >= max && len > 0 {
                pieces.push(std::mem::take(&mut current));
                len = 0;
            }
            current.push(c);
            len += 1;
        }
    }
    pieces.push(current);
    pieces
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "how", "i", "if",
    "in", "is", "it", "its", "of", "on", "or", "so", "that", "the", "then", "this", "to", "was",
    "we", "what", "when", "which", "with", "you", "your",
];

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// FNV-1a: a fixed, platform-independent hash, so embeddings never change between builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Hashing-trick embedding: word unigrams (without stopwords) and bigrams, weighted by
/// `1 + ln(term frequency)`, hashed with a sign into `LOCAL_DIMENSIONS` buckets, L2
/// normalized. Text without words embeds to the zero vector.
pub fn embed_local(text: &str) -> Vec<f32> {
    let words = words(text);
    let is_stop = |w: &str| STOPWORDS.contains(&w);
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for w in words.iter().filter(|w| !is_stop(w)) {
        *counts.entry(w.clone()).or_default() += 1;
    }
    for pair in words.windows(2) {
        if !(is_stop(&pair[0]) && is_stop(&pair[1])) {
            *counts
                .entry(format!("{} {}", pair[0], pair[1]))
                .or_default() += 1;
        }
    }
    let mut v = vec![0f32; LOCAL_DIMENSIONS];
    for (feature, tf) in counts {
        let h = fnv1a(feature.as_bytes());
        let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
        v[(h % LOCAL_DIMENSIONS as u64) as usize] += sign * (1.0 + (tf as f32).ln());
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Cosine similarity; 0 for vectors of different length or zero norm.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na > 0.0 && nb > 0.0 {
        dot / (na * nb)
    } else {
        0.0
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

async fn embed_external(
    url: &str,
    api_key: Option<&str>,
    inputs: &[String],
) -> Result<Vec<Vec<f32>>, ExternalError> {
    let endpoint = format!("{}/embeddings", url.trim().trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .connect_timeout(EXTERNAL_TIMEOUT)
        .timeout(EXTERNAL_TIMEOUT)
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
    for batch in inputs.chunks(EXTERNAL_BATCH) {
        let mut request = client.post(&endpoint).json(&EmbeddingRequest {
            input: batch,
            model: EXTERNAL_MODEL,
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
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn queries(qs: &[&str]) -> Vec<String> {
        qs.iter().map(|q| q.to_string()).collect()
    }

    async fn retrieve(
        provider: &Provider,
        qs: &[&str],
        k: usize,
    ) -> Result<KnowledgeOutcome, String> {
        index_and_retrieve(provider, &runbooks(), &queries(qs), k).await
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
    fn runbooks_are_built_in_with_titles() {
        let books = runbooks();
        let titles: Vec<_> = books.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Alias rollback",
                "Promotion policy",
                "Heartbeat reaper",
                "Provisioning failures",
                "On-call first steps"
            ]
        );
        assert!(books.iter().all(|(_, text)| text.len() > 800));
    }

    #[test]
    fn chunks_follow_sections_and_size_limit() {
        let (title, text) = &runbooks()[0];
        let passages = chunk(title, text);
        assert!(passages.len() >= 4, "{passages:?}");
        assert_eq!(passages[0].title, "Alias rollback");
        assert!(passages
            .iter()
            .any(|p| p.title == "Alias rollback › Roll back with compare-and-swap"));
        assert!(passages
            .iter()
            .all(|p| !p.text.is_empty() && p.text.chars().count() <= MAX_PASSAGE_CHARS));

        let long = format!("# T\n\n{}\n\n{}", "word ".repeat(400), "x".repeat(2000));
        let passages = chunk("T", &long);
        assert!(passages
            .iter()
            .all(|p| p.text.chars().count() <= MAX_PASSAGE_CHARS));
        let total: usize = passages
            .iter()
            .map(|p| p.text.matches("word").count())
            .sum();
        assert_eq!(total, 400, "no word lost or cut");
        assert!(chunk("empty", "").is_empty());
        assert!(chunk("headings only", "# a\n## b\n").is_empty());
    }

    #[test]
    fn local_embedding_is_normalized_and_deterministic() {
        let a = embed_local("Roll back the alias demo-production");
        assert_eq!(a.len(), LOCAL_DIMENSIONS);
        assert!((a.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(a, embed_local("roll BACK the alias, demo production!"));
        assert!(embed_local("the of a").iter().all(|x| *x == 0.0));
        assert!(embed_local("").iter().all(|x| *x == 0.0));
        let b = embed_local("alias rollback revision");
        let c = embed_local("credit pool subscription schema");
        assert!(cosine(&a, &b) > cosine(&a, &c));
        assert_eq!(cosine(&a, &[1.0]), 0.0);
        assert_eq!(cosine(&a, &vec![0.0; LOCAL_DIMENSIONS]), 0.0);
    }

    #[tokio::test]
    async fn local_retrieval_finds_the_right_runbooks() {
        let q = ["how do I roll back demo-production to a previous revision"];
        let p = retrieved(retrieve(&Provider::Local, &q, 3).await.unwrap());
        assert!(!p.is_empty() && p.len() <= 3);
        assert!(p[0].title.starts_with("Alias rollback"), "{p:#?}");
        assert!(p.windows(2).all(|w| w[0].score >= w[1].score));

        let q = [
            "run stuck RUNNING marked FAILED heartbeat timeout",
            "graph provisioning failed credit pool",
        ];
        let p = retrieved(retrieve(&Provider::Local, &q, 2).await.unwrap());
        assert!(p.len() <= 4);
        assert!(
            p.iter().any(|x| x.title.starts_with("Heartbeat reaper")),
            "{p:#?}"
        );
        assert!(
            p.iter()
                .any(|x| x.title.starts_with("Provisioning failures")),
            "{p:#?}"
        );
        // Deterministic: same inputs, same passages and scores.
        assert_eq!(
            p,
            retrieved(retrieve(&Provider::Local, &q, 2).await.unwrap())
        );
    }

    #[tokio::test]
    async fn trivial_requests_retrieve_nothing() {
        for (docs, qs, k) in [
            (runbooks(), queries(&["alias"]), 0),
            (runbooks(), vec![], 3),
            (vec![], queries(&["alias"]), 3),
        ] {
            let out = index_and_retrieve(&Provider::Local, &docs, &qs, k)
                .await
                .unwrap();
            assert_eq!(out, KnowledgeOutcome::Retrieved(vec![]));
        }
        // Only stopwords: the query embeds to zero and matches nothing.
        let p = retrieved(
            retrieve(&Provider::Local, &["what is the"], 3)
                .await
                .unwrap(),
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn debug_redacts_the_api_key() {
        let p = Provider::External {
            url: "http://x".into(),
            api_key: Some("sk-secret".into()),
        };
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
        assert_eq!(req["model"], EXTERNAL_MODEL);
        let inputs = req["input"].as_array().unwrap();
        let data: Vec<_> = inputs
            .iter()
            .enumerate()
            .rev()
            .map(|(i, text)| serde_json::json!({"object": "embedding", "index": i, "embedding": embed_local(text.as_str().unwrap())}))
            .collect();
        (
            200,
            serde_json::json!({"object": "list", "data": data, "model": EXTERNAL_MODEL})
                .to_string(),
        )
    }

    fn external(url: &str, key: Option<&str>) -> Provider {
        Provider::External {
            url: url.into(),
            api_key: key.map(String::from),
        }
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
        let local = retrieved(retrieve(&Provider::Local, &q, 3).await.unwrap());
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
        assert!(
            waited >= EXTERNAL_TIMEOUT && waited < EXTERNAL_TIMEOUT * 2,
            "{waited:?}"
        );
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
