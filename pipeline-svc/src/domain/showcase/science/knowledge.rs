//! Runbook retrieval: documents are cut into passages, embedded, and the passages nearest
//! to each query (cosine similarity) are returned.
//!
//! The embeddings come from the [`Embedder`] port: the built-in local embedder
//! ([`embed_local`]) needs nothing outside the process; an external provider that cannot
//! be used now makes the retrieval `Skipped` with the reason, since optional enrichment
//! must never fail the demo.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::super::embedder::{Embedder, Embeddings};

/// Dimensions of the local hashing-trick embedding.
pub const LOCAL_DIMENSIONS: usize = 256;
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

#[derive(Clone, Debug, PartialEq)]
pub enum KnowledgeOutcome {
    Retrieved(Vec<Passage>),
    /// The provider could not be used; the reason is for the step's detail.
    Skipped(String),
}

/// The project's runbooks as (title, markdown); the title is each file's first heading.
pub fn runbooks() -> Vec<(String, String)> {
    [
        include_str!("../../../../../docs/runbooks/alias-rollback.md"),
        include_str!("../../../../../docs/runbooks/promotion-policy.md"),
        include_str!("../../../../../docs/runbooks/heartbeat-reaper.md"),
        include_str!("../../../../../docs/runbooks/provisioning-failures.md"),
        include_str!("../../../../../docs/runbooks/on-call.md"),
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

/// Cuts `docs` into passages, embeds them and the queries with `embedder`, and returns the
/// `k` best passages of every query (deduplicated, best first). Passages with no
/// similarity at all are not returned.
pub async fn index_and_retrieve(
    embedder: &dyn Embedder,
    docs: &[(String, String)],
    queries: &[String],
    k: usize,
) -> Result<KnowledgeOutcome, String> {
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
    let vectors = match embedder.embed(&inputs).await? {
        Embeddings::Vectors(v) if v.len() == inputs.len() => v,
        Embeddings::Vectors(v) => {
            return Err(format!(
                "the embedder returned {} vectors for {} inputs",
                v.len(),
                inputs.len()
            ))
        }
        Embeddings::Unusable(reason) => return Ok(KnowledgeOutcome::Skipped(reason)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::showcase::embedder::LocalEmbedder;

    fn queries(qs: &[&str]) -> Vec<String> {
        qs.iter().map(|q| q.to_string()).collect()
    }

    async fn retrieve(
        provider: &dyn Embedder,
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
        let p = retrieved(retrieve(&LocalEmbedder, &q, 3).await.unwrap());
        assert!(!p.is_empty() && p.len() <= 3);
        assert!(p[0].title.starts_with("Alias rollback"), "{p:#?}");
        assert!(p.windows(2).all(|w| w[0].score >= w[1].score));

        let q = [
            "run stuck RUNNING marked FAILED heartbeat timeout",
            "graph provisioning failed credit pool",
        ];
        let p = retrieved(retrieve(&LocalEmbedder, &q, 2).await.unwrap());
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
        assert_eq!(p, retrieved(retrieve(&LocalEmbedder, &q, 2).await.unwrap()));
    }

    #[tokio::test]
    async fn trivial_requests_retrieve_nothing() {
        for (docs, qs, k) in [
            (runbooks(), queries(&["alias"]), 0),
            (runbooks(), vec![], 3),
            (vec![], queries(&["alias"]), 3),
        ] {
            let out = index_and_retrieve(&LocalEmbedder, &docs, &qs, k)
                .await
                .unwrap();
            assert_eq!(out, KnowledgeOutcome::Retrieved(vec![]));
        }
        // Only stopwords: the query embeds to zero and matches nothing.
        let p = retrieved(retrieve(&LocalEmbedder, &["what is the"], 3).await.unwrap());
        assert!(p.is_empty(), "{p:?}");
    }
}
