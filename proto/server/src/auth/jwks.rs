//! The signing keys of one OpenID issuer: fetched from its JWKS (named by its discovery
//! document, or at a URL given), cached, and fetched again when a token names a key the
//! cache lacks (at most once per `min_refetch`, so made-up `kid`s cannot flood the IdP)
//! and when they are older than `refresh` (in the background, so keys the IdP withdrew
//! stop working). A failed fetch keeps the keys already cached: an IdP outage locks out
//! no caller whose key is known.
//!
//! Verification never waits on a lock held across an await: the keys sit behind a
//! `std` lock taken only to clone an `Arc`. Fetches are serialised by an async mutex,
//! which only requests for an unknown key wait on.

use std::{
    collections::HashMap,
    path::PathBuf,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, PoisonError, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
    Algorithm, DecodingKey, Validation,
};
use reqwest::Url;
use serde::{de::DeserializeOwned, Deserialize};
use tonic::Status;

/// Discovery and JWKS documents are small; a larger answer is refused.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Where the issuer's keys are.
#[derive(Debug, Clone)]
pub(super) enum KeySource {
    /// The discovery document at this URL names the JWKS (`jwks_uri`).
    Discovery(Url),
    /// The JWKS itself.
    Jwks(Url),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// Keys older than this are fetched again (in the background).
    pub refresh: Duration,
    /// At most one fetch per this long, whatever tokens arrive.
    pub min_refetch: Duration,
}

/// A key of the issuer and how tokens it signed are validated: issuer, audience and
/// leeway of the issuer, and the algorithms this key is for.
pub(super) struct VerifyKey {
    pub key: DecodingKey,
    pub validation: Validation,
}

impl VerifyKey {
    fn signs(&self, alg: Algorithm) -> bool {
        self.validation.algorithms.contains(&alg)
    }
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Vec<Arc<VerifyKey>>>,
    all: Vec<Arc<VerifyKey>>,
    fetched: Option<Instant>,
}

impl KeySet {
    /// The key a token with this `kid` and `alg` was signed with; a token that names no
    /// key may use the one key of its algorithm, when there is exactly one.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyKey>> {
        let candidates = match kid {
            Some(kid) => self.by_kid.get(kid)?.as_slice(),
            None => self.all.as_slice(),
        };
        let mut fitting = candidates.iter().filter(|k| k.signs(alg));
        match (fitting.next(), fitting.next(), kid) {
            (Some(key), None, _) | (Some(key), Some(_), Some(_)) => Some(Arc::clone(key)),
            _ => None,
        }
    }
}

/// The cached keys of one issuer.
pub(super) struct IssuerKeys {
    pub issuer: String,
    source: KeySource,
    http: reqwest::Client,
    /// Sent as a bearer token with every fetch (a Kubernetes API server's JWKS needs one).
    fetch_token_file: Option<PathBuf>,
    timing: Timing,
    /// What every key's validation starts from: issuer, audience, leeway, `exp` required.
    base: Validation,
    keys: RwLock<Arc<KeySet>>,
    /// Held while fetching, so fetches never overlap; when the last one started.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refreshing: AtomicBool,
}

impl IssuerKeys {
    pub(super) fn new(
        issuer: String,
        source: KeySource,
        http: reqwest::Client,
        fetch_token_file: Option<PathBuf>,
        timing: Timing,
        base: Validation,
    ) -> Self {
        Self {
            issuer,
            source,
            http,
            fetch_token_file,
            timing,
            base,
            keys: RwLock::default(),
            last_fetch: tokio::sync::Mutex::new(None),
            refreshing: AtomicBool::new(false),
        }
    }

    fn cached(&self) -> Arc<KeySet> {
        // Writers only swap an Arc, so a poisoned lock still holds a whole value.
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The key a token with this `kid` and `alg` was signed with, fetching the JWKS
    /// again when the cache lacks it (rate-limited).
    pub(super) async fn key(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, Status> {
        let cached = self.cached();
        if cached
            .fetched
            .is_some_and(|t| t.elapsed() >= self.timing.refresh)
        {
            self.refresh_in_background();
        }
        if let Some(key) = cached.find(kid, alg) {
            return Ok(key);
        }
        self.fetch_unless_recent().await;
        self.cached().find(kid, alg).ok_or_else(|| {
            Status::unauthenticated(match kid {
                Some(kid) => format!(
                    "invalid bearer token: issuer {} publishes no {alg:?} key {kid:?}",
                    self.issuer
                ),
                None => format!(
                    "invalid bearer token: it names no key (`kid`) and issuer {} has no single {alg:?} key",
                    self.issuer
                ),
            })
        })
    }

    /// Starts a fetch unless one is under way (at start, and when the keys grew old).
    pub(super) fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.fetch_unless_recent().await;
            this.refreshing.store(false, Ordering::Release);
        });
    }

    async fn fetch_unless_recent(&self) {
        let mut last = self.last_fetch.lock().await;
        // Also true when another task fetched while this one waited for the lock.
        if last.is_some_and(|t| t.elapsed() < self.timing.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                let count = set.all.len();
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
                tracing::info!(issuer = %self.issuer, keys = count, "fetched the issuer's signing keys");
            }
            Err(e) => {
                let e = format!("{e:#}");
                tracing::error!(
                    error = %e,
                    issuer = %self.issuer,
                    cached_keys = self.cached().all.len(),
                    "cannot fetch the issuer's signing keys; keeping those cached"
                );
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<KeySet> {
        let jwks_url = match &self.source {
            KeySource::Jwks(url) => url.clone(),
            KeySource::Discovery(url) => {
                let doc: Discovery = self.get_json(url).await?;
                if doc.issuer != self.issuer {
                    bail!(
                        "the discovery document at {url} is issuer {:?}'s, not {:?}'s",
                        doc.issuer,
                        self.issuer
                    );
                }
                let jwks = Url::parse(&doc.jwks_uri).with_context(|| {
                    format!(
                        "the discovery document at {url} has jwks_uri {:?}, no URL",
                        doc.jwks_uri
                    )
                })?;
                check_fetch_url(&jwks).with_context(|| format!("jwks_uri of {url}"))?;
                jwks
            }
        };
        let doc: JwksDocument = self.get_json(&jwks_url).await?;
        let mut set = KeySet {
            fetched: Some(Instant::now()),
            ..KeySet::default()
        };
        for value in doc.keys {
            match self.verify_key(value) {
                Ok(Some((kid, key))) => {
                    let key = Arc::new(key);
                    if let Some(kid) = kid {
                        set.by_kid.entry(kid).or_default().push(Arc::clone(&key));
                    }
                    set.all.push(key);
                }
                Ok(None) => {}
                Err(e) => {
                    let e = format!("{e:#}");
                    tracing::warn!(error = %e, issuer = %self.issuer, "skipping a key of the JWKS");
                }
            }
        }
        if set.all.is_empty() {
            bail!("the JWKS at {jwks_url} holds no signing key (RS*, PS*, ES256, ES384 or EdDSA)");
        }
        Ok(set)
    }

    /// A key of the JWKS ready to verify with, with its `kid`; `None` for encryption keys.
    fn verify_key(
        &self,
        value: serde_json::Value,
    ) -> anyhow::Result<Option<(Option<String>, VerifyKey)>> {
        let jwk: Jwk = serde_json::from_value(value).context("not a JSON Web Key")?;
        let encryption = matches!(
            jwk.common.key_algorithm,
            Some(KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256)
        );
        if encryption || jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return Ok(None);
        }
        let mut validation = self.base.clone();
        validation.algorithms = signing_algorithms(&jwk)?;
        let key = DecodingKey::from_jwk(&jwk).context("unusable key material")?;
        Ok(Some((jwk.common.key_id, VerifyKey { key, validation })))
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> anyhow::Result<T> {
        let mut request = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(path) = &self.fetch_token_file {
            // Read each time: projected tokens are rotated on disk.
            let token = tokio::fs::read_to_string(path).await.with_context(|| {
                format!("cannot read --oidc-fetch-token-file {}", path.display())
            })?;
            request = request.bearer_auth(token.trim());
        }
        let mut response = request.send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {url}: HTTP {status}");
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("GET {url}"))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                bail!("GET {url}: the answer exceeds {MAX_DOCUMENT_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: not the JSON expected"))
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Keys are parsed one by one: one key of a kind jsonwebtoken does not know must not
/// hide the others.
#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

/// The algorithms a key may verify: those of its type (and curve), narrowed to its `alg`
/// when it names one. Symmetric keys never verify issuer tokens: anyone holding the
/// published JWKS could sign with them.
fn signing_algorithms(jwk: &Jwk) -> anyhow::Result<Vec<Algorithm>> {
    use Algorithm::{EdDSA, ES256, ES384, PS256, PS384, PS512, RS256, RS384, RS512};
    let of_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[ES256],
            EllipticCurve::P384 => &[ES384],
            ref other => bail!("EC keys on {other:?} are not supported"),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[EdDSA],
            ref other => bail!("OKP keys on {other:?} are not supported"),
        },
        AlgorithmParameters::OctetKey(_) => bail!("a symmetric key (kty oct) is never used"),
    };
    match jwk.common.key_algorithm {
        None => Ok(of_type.to_vec()),
        Some(named) => {
            let alg = Algorithm::from_str(&named.to_string())
                .with_context(|| format!("alg {named} is no signing algorithm"))?;
            if !of_type.contains(&alg) {
                bail!("alg {named} does not fit the key's type");
            }
            Ok(vec![alg])
        }
    }
}

/// Keys travel over HTTPS; plain HTTP only to this machine (a local IdP, tests).
pub(super) fn check_fetch_url(url: &Url) -> anyhow::Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => bail!("{url} is plain HTTP: keys are fetched over https:// (http:// only from loopback addresses)"),
        other => bail!("{url} has scheme {other:?}: keys are fetched over https://"),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(json: serde_json::Value) -> Jwk {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn keys_verify_only_the_algorithms_of_their_type() {
        let rsa = jwk(serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}));
        assert!(signing_algorithms(&rsa)
            .unwrap()
            .contains(&Algorithm::PS256));
        let named =
            jwk(serde_json::json!({"kty": "RSA", "alg": "RS256", "n": "AQAB", "e": "AQAB"}));
        assert_eq!(signing_algorithms(&named).unwrap(), [Algorithm::RS256]);
        let misnamed =
            jwk(serde_json::json!({"kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB"}));
        assert!(signing_algorithms(&misnamed).is_err());
        let ec = jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}));
        assert_eq!(signing_algorithms(&ec).unwrap(), [Algorithm::ES256]);
        let ed = jwk(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AA"}));
        assert_eq!(signing_algorithms(&ed).unwrap(), [Algorithm::EdDSA]);
        let oct = jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}));
        assert!(signing_algorithms(&oct).is_err());
    }

    #[test]
    fn keys_are_fetched_over_https_or_from_loopback() {
        for ok in [
            "https://idp.example.com/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]/jwks",
            "http://localhost:1/jwks",
        ] {
            check_fetch_url(&Url::parse(ok).unwrap()).unwrap();
        }
        for bad in ["http://idp.example.com/jwks", "ftp://127.0.0.1/jwks"] {
            assert!(check_fetch_url(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
