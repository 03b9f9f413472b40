//! The knowledge step's embedding provider, as a port. The built-in local embedder lives
//! here (it is pure computation); `clients::embeddings` reaches an external,
//! OpenAI-compatible one.

use async_trait::async_trait;

use super::science::knowledge::embed_local;

#[derive(Debug, Clone, PartialEq)]
pub enum Embeddings {
    /// One vector per input, in order.
    Vectors(Vec<Vec<f32>>),
    /// The provider cannot be used now (not configured, unreachable, refusing the
    /// credentials); the knowledge step is skipped with this reason.
    Unusable(String),
}

#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// `Err`: the provider answered, but not with embeddings (a server error, a malformed
    /// or ragged answer); the message says which.
    async fn embed(&self, inputs: &[String]) -> Result<Embeddings, String>;
}

/// The hashing-trick embedder of [`embed_local`]: deterministic, no I/O.
pub struct LocalEmbedder;

#[async_trait]
impl Embedder for LocalEmbedder {
    async fn embed(&self, inputs: &[String]) -> Result<Embeddings, String> {
        Ok(Embeddings::Vectors(
            inputs.iter().map(|t| embed_local(t)).collect(),
        ))
    }
}
