//! The bearer token pipeline-svc presents to the registry, from a file that is read
//! again when it changes: a Kubernetes projected service-account token, which the kubelet
//! rewrites well before it expires. Channels keep their connections; only the token they
//! send changes.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use capstan_client::BearerToken;
use capstan_server::auth::trim_secret;

/// The file is looked at again on a call to the registry once this long has passed.
const RECHECK: Duration = Duration::from_secs(1);

pub struct TokenFile {
    path: PathBuf,
    token: BearerToken,
    seen: Mutex<Seen>,
}

struct Seen {
    token: String,
    checked: Instant,
}

impl TokenFile {
    /// Reads the file now: one that is missing, empty or not a header value fails the
    /// start, naming the flag.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read --registry-token-file {}", path.display()))?;
        let token =
            parse(&bytes).with_context(|| format!("--registry-token-file {}", path.display()))?;
        let bearer = BearerToken::default();
        bearer
            .replace(&token)
            .with_context(|| format!("--registry-token-file {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            token: bearer,
            seen: Mutex::new(Seen {
                token,
                checked: Instant::now(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token channels send; [`TokenFile::refresh`] changes it for all of them.
    pub fn bearer(&self) -> BearerToken {
        self.token.clone()
    }

    /// Reads the file again when it was last read more than [`RECHECK`] ago. A file that
    /// cannot be read, or holds no token, keeps the last token (and is logged): the kubelet
    /// swaps the file atomically, so that is an operator's mistake, not a rotation.
    pub async fn refresh(&self) {
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.checked.elapsed() < RECHECK {
                return;
            }
            seen.checked = Instant::now();
        }
        let read = tokio::fs::read(&self.path)
            .await
            .map_err(anyhow::Error::from)
            .and_then(|bytes| parse(&bytes));
        let token = match read {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot read --registry-token-file again; keeping the last token");
                return;
            }
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.token == token {
            return;
        }
        match self.token.replace(&token) {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), "--registry-token-file changed; the registry gets the new token");
                seen.token = token;
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "--registry-token-file holds no valid token; keeping the last one");
            }
        }
    }
}

fn parse(bytes: &[u8]) -> anyhow::Result<String> {
    let text = std::str::from_utf8(trim_secret(bytes)).context("the token is not UTF-8")?;
    if text.is_empty() {
        bail!("the file is empty");
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rewritten_file_replaces_the_token_and_a_broken_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let file = TokenFile::open(&path).unwrap();
        let sent = |file: &TokenFile| {
            use tonic::service::Interceptor as _;
            let request = file.bearer().call(tonic::Request::new(())).unwrap();
            request
                .metadata()
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(sent(&file), "Bearer first");

        std::fs::write(&path, "second").unwrap();
        file.seen.lock().unwrap().checked -= RECHECK;
        file.refresh().await;
        assert_eq!(sent(&file), "Bearer second");

        for broken in ["", "bad\u{7f}token"] {
            std::fs::write(&path, broken).unwrap();
            file.seen.lock().unwrap().checked -= RECHECK;
            file.refresh().await;
            assert_eq!(sent(&file), "Bearer second", "{broken:?}");
        }
        std::fs::remove_file(&path).unwrap();
        file.seen.lock().unwrap().checked -= RECHECK;
        file.refresh().await;
        assert_eq!(sent(&file), "Bearer second");
        assert!(TokenFile::open(&path).is_err());
    }
}
