//! Bearer-JWT authentication as a tower layer, and the caller's identity.
//!
//! The layer verifies `authorization: Bearer …` on every call except health and
//! reflection, and puts a [`Principal`] into the request extensions; handlers then check
//! the role and the namespace grants. Two kinds of token are accepted:
//!
//! - tokens with an `iss` claim: an OpenID issuer's, verified with the public keys of its
//!   JWKS and mapped onto a principal by the `--oidc-*` settings ([`oidc`]);
//! - tokens without one: signed with the key of `--jwt-secret-file` (HS256 tokens the
//!   services mint, or RS256 under a PEM public key), carrying `sub`, `role` (`admin`,
//!   `service` or `user`), `exp` and, optionally, `namespaces` ([`key_file`]).
//!
//! # Namespace grants
//!
//! Registry data lives in namespaces (one per team, say). A caller may read the
//! namespaces its grants name for reading or writing, and write those named for writing;
//! `*` names every namespace. The role still decides what kind of caller it is: `admin`
//! may read and write every namespace whatever its grants say, `service` may write where
//! it is granted, `user` only ever reads.
//!
//! The claim is `"namespaces": {"read": ["team-b"], "write": ["team-a"]}` (either list may
//! be left out). A token without it gets the grants its role had before namespaces
//! existed, on the `default` namespace where every older run and alias lives
//! ([`Grants::role_default`]): `service` reads and writes `default`, `user` reads
//! `default`. Existing tokens and deployments keep working, and see no other team's data.

mod jwks;
pub mod key_file;
pub mod oidc;

use std::{
    future::Future,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tonic::{body::Body, Status};
use tower::{Layer, Service};

pub use key_file::{issue_hs256, issue_hs256_granted, trim_secret, Claims, TokenArgs};
pub use oidc::OidcArgs;

use key_file::KeyFile;
use oidc::Oidc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Service,
    User,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "service" => Ok(Role::Service),
            "user" => Ok(Role::User),
            other => Err(format!(
                "unknown role {other:?}: expected admin, service or user"
            )),
        }
    }
}

/// The namespace every request that names none uses, and where data from before
/// namespaces lives.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Which namespaces a caller may read and write (the token's `namespaces` claim). `*`
/// names every namespace; a namespace granted for writing may also be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<String>,
}

impl Grants {
    /// Names every namespace in a grant list.
    pub const EVERY: &'static str = "*";

    /// Read and write on every namespace.
    pub fn all() -> Self {
        Self {
            read: Vec::new(),
            write: vec![Self::EVERY.into()],
        }
    }

    /// What a token without the claim may do: what its role could do before namespaces,
    /// on `default` (admin: everything).
    pub fn role_default(role: Role) -> Self {
        let default = vec![DEFAULT_NAMESPACE.to_string()];
        match role {
            Role::Admin => Self::all(),
            Role::Service => Self {
                read: Vec::new(),
                write: default,
            },
            Role::User => Self {
                read: default,
                write: Vec::new(),
            },
        }
    }

    fn names(list: &[String], namespace: &str) -> bool {
        list.iter().any(|g| g == Self::EVERY || g == namespace)
    }

    pub fn can_read(&self, namespace: &str) -> bool {
        Self::names(&self.read, namespace) || self.can_write(namespace)
    }

    pub fn can_write(&self, namespace: &str) -> bool {
        Self::names(&self.write, namespace)
    }

    /// The namespaces that may be read, in order and once each; `None` when that is every
    /// namespace.
    pub fn readable(&self) -> Option<Vec<String>> {
        let mut names: Vec<String> = self.read.iter().chain(&self.write).cloned().collect();
        if names.iter().any(|n| n == Self::EVERY) {
            return None;
        }
        names.sort();
        names.dedup();
        Some(names)
    }
}

/// Who is calling. With auth disabled every caller is `anonymous` with the admin role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
    /// Where the caller may read and write; see [`Principal::can_read`] and
    /// [`Principal::can_write`], which also weigh the role.
    pub grants: Grants,
}

impl Principal {
    /// A caller with these grants, or its role's default ([`Grants::role_default`]) when
    /// the token carried none.
    pub fn new(subject: impl Into<String>, role: Role, grants: Option<Grants>) -> Self {
        Self {
            subject: subject.into(),
            role,
            grants: grants.unwrap_or_else(|| Grants::role_default(role)),
        }
    }

    pub fn anonymous_admin() -> Self {
        Self::new("anonymous", Role::Admin, None)
    }

    /// Whether the caller may read `namespace`: admins always, others where granted.
    pub fn can_read(&self, namespace: &str) -> bool {
        self.is_admin() || self.grants.can_read(namespace)
    }

    /// Whether the caller may write `namespace`: admins always, services where granted,
    /// users never.
    pub fn can_write(&self, namespace: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Service => self.grants.can_write(namespace),
            Role::User => false,
        }
    }

    /// The namespaces the caller may read, sorted; `None` when that is every namespace.
    pub fn readable_namespaces(&self) -> Option<Vec<String>> {
        if self.is_admin() {
            return None;
        }
        self.grants.readable()
    }

    /// The caller of a request that passed the [`AuthLayer`].
    #[allow(clippy::result_large_err)]
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Why `--auth jwt` cannot start: it has nothing to verify tokens with.
pub(crate) const NO_KEY_SOURCE: &str = "--auth jwt needs --jwt-secret-file (CAPSTAN_JWT_SECRET_FILE) or --oidc-issuer (CAPSTAN_OIDC_ISSUERS); pass --auth disabled (CAPSTAN_AUTH=disabled) to run without authentication";

/// Verifies tokens; `None` inside means auth is disabled.
#[derive(Clone)]
pub struct Verifier(Option<Arc<Sources>>);

struct Sources {
    key_file: Option<KeyFile>,
    oidc: Option<Oidc>,
}

impl Verifier {
    pub fn disabled() -> Self {
        tracing::warn!("authentication is DISABLED (--auth disabled): every caller is an admin");
        Self(None)
    }

    /// Tokens signed with the key of `key_file` and those of the OpenID issuers of
    /// `oidc`; at least one of the two must be configured. Every setting is checked here,
    /// at start; issuer keys are fetched once serving starts ([`Verifier::warm_up`]).
    pub fn from_settings(key_file: Option<&Path>, oidc: &OidcArgs) -> anyhow::Result<Self> {
        let key_file = key_file.map(KeyFile::read).transpose()?;
        let oidc = Oidc::from_args(oidc)?;
        if key_file.is_none() && oidc.is_none() {
            anyhow::bail!(NO_KEY_SOURCE);
        }
        Ok(Self(Some(Arc::new(Sources { key_file, oidc }))))
    }

    /// HS256 tokens signed with `secret` only.
    pub fn hs256(secret: &[u8]) -> Self {
        Self(Some(Arc::new(Sources {
            key_file: Some(KeyFile::hs256(secret)),
            oidc: None,
        })))
    }

    /// Fetches the OpenID issuers' keys in the background (needs a Tokio runtime).
    pub fn warm_up(&self) {
        if let Some(oidc) = self.0.as_ref().and_then(|s| s.oidc.as_ref()) {
            oidc.warm_up();
        }
    }

    /// The caller an `authorization` header names, or UNAUTHENTICATED saying why not
    /// (PERMISSION_DENIED for an issuer's token that maps to no role).
    pub async fn verify(&self, authorization: Option<&str>) -> Result<Principal, Status> {
        let Some(sources) = &self.0 else {
            return Ok(Principal::anonymous_admin());
        };
        let header = authorization.ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be `Bearer <token>`")
            })?
            .trim();
        match (unverified_issuer(token)?, &sources.oidc, &sources.key_file) {
            (Some(iss), Some(oidc), _) => oidc.verify(token, &iss).await,
            (Some(iss), None, _) => Err(Status::unauthenticated(format!(
                "invalid bearer token: issuer {iss:?} is not accepted (no --oidc-issuer is configured)"
            ))),
            (None, _, Some(key_file)) => key_file.verify(token),
            (None, _, None) => Err(Status::unauthenticated(
                "invalid bearer token: it names no issuer (`iss`), and only OpenID issuers' tokens are accepted",
            )),
        }
    }
}

/// The `iss` claim of a token not yet verified: it only says which keys to verify with.
#[allow(clippy::result_large_err)]
fn unverified_issuer(token: &str) -> Result<Option<String>, Status> {
    #[derive(Deserialize)]
    struct Issuer {
        iss: Option<String>,
    }
    let malformed =
        || Status::unauthenticated("invalid bearer token: not a JWT (header.payload.signature)");
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| malformed())?;
    let claims: Issuer = serde_json::from_slice(&json).map_err(|_| malformed())?;
    Ok(claims.iss)
}

/// Paths that stay open without a token: probes and tooling discovery.
fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

#[derive(Clone)]
pub struct AuthLayer {
    verifier: Verifier,
}

impl AuthLayer {
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: Verifier,
}

impl<S> Service<http::Request<Body>> for AuthService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if is_public(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The service driven ready is the one to call; a clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match verifier.verify(header).await {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    /// Key-file tokens are verified without waiting on anything.
    #[allow(clippy::result_large_err)]
    fn verify_now(v: &Verifier, token: &str) -> Result<Principal, Status> {
        v.verify(Some(&format!("Bearer {token}")))
            .now_or_never()
            .expect("key-file verification never waits")
    }

    #[tokio::test]
    async fn verifies_own_tokens_and_refuses_others() {
        let v = Verifier::hs256(b"0123456789abcdef0123");
        let t = issue_hs256(b"0123456789abcdef0123", "alice", Role::User, 60).unwrap();
        let p = v.verify(Some(&format!("Bearer {t}"))).await.unwrap();
        assert_eq!(p, Principal::new("alice", Role::User, None));

        let other = issue_hs256(b"another-secret-0123456", "alice", Role::Admin, 60).unwrap();
        for bad in [
            None,
            Some("Basic abc".to_string()),
            Some(format!("Bearer {other}")),
            Some("Bearer x.y.z".into()),
        ] {
            let err = v.verify(bad.as_deref()).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn expired_tokens_are_refused() {
        let claims = Claims {
            sub: "a".into(),
            role: Role::Admin,
            exp: 1_000,
            namespaces: None,
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef"),
        )
        .unwrap();
        let err = verify_now(&Verifier::hs256(b"0123456789abcdef"), &t).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    fn granted(role: Role, read: &[&str], write: &[&str]) -> Principal {
        let secret = b"0123456789abcdef0123";
        let grants = Grants {
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
        };
        let t = issue_hs256_granted(secret, "caller", role, Some(&grants), 60).unwrap();
        verify_now(&Verifier::hs256(secret), &t).unwrap()
    }

    #[test]
    fn grants_travel_in_the_token_and_weigh_with_the_role() {
        let a = granted(Role::Service, &["team-b"], &["team-a"]);
        assert!(a.can_write("team-a") && a.can_read("team-a"));
        assert!(a.can_read("team-b") && !a.can_write("team-b"));
        assert!(!a.can_read("default") && !a.can_read("team-c"));
        assert_eq!(
            a.readable_namespaces(),
            Some(vec!["team-a".to_string(), "team-b".to_string()])
        );

        // Users never write, whatever their grants say; admins do everything.
        let u = granted(Role::User, &[], &["team-a"]);
        assert!(u.can_read("team-a") && !u.can_write("team-a"));
        let admin = granted(Role::Admin, &[], &[]);
        assert!(admin.can_write("anything") && admin.readable_namespaces().is_none());

        // `*` names every namespace.
        let reader = granted(Role::Service, &["*"], &[]);
        assert!(reader.can_read("x") && !reader.can_write("x"));
        assert_eq!(reader.readable_namespaces(), None);

        // A claim that grants nothing grants nothing (it is not the role's default).
        let none = granted(Role::Service, &[], &[]);
        assert!(!none.can_read("default") && !none.can_write("default"));
    }

    #[test]
    fn tokens_without_the_claim_keep_their_roles_old_reach_on_default() {
        let service = Principal::new("svc", Role::Service, None);
        assert!(service.can_write("default") && service.can_read("default"));
        assert!(!service.can_read("team-a") && !service.can_write("team-a"));
        let user = Principal::new("u", Role::User, None);
        assert!(user.can_read("default") && !user.can_write("default"));
        assert!(!user.can_read("team-a"));
        let admin = Principal::anonymous_admin();
        assert!(admin.can_write("team-a") && admin.can_read("team-z"));
        // A claim-less token's payload has no `namespaces` field at all.
        let t = issue_hs256(b"0123456789abcdef", "s", Role::Service, 60).unwrap();
        let payload = t.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        assert!(!String::from_utf8(json).unwrap().contains("namespaces"));
    }

    #[test]
    fn the_token_command_mints_grants_from_its_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            token: TokenArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
        let mint = |extra: &[&str]| {
            let base = [
                "token",
                "--jwt-secret-file",
                key.to_str().unwrap(),
                "--role",
                "service",
            ];
            let cli = Cli::parse_from(base.iter().chain(extra));
            let t = cli.token.mint().unwrap();
            verify_now(&Verifier::hs256(b"0123456789abcdef0123"), &t).unwrap()
        };
        let p = mint(&[
            "--write-namespace",
            "team-a",
            "--read-namespace",
            "team-b",
            "--read-namespace",
            "team-c",
        ]);
        assert_eq!(p.grants.write, ["team-a"]);
        assert_eq!(p.grants.read, ["team-b", "team-c"]);
        assert_eq!(mint(&[]).grants, Grants::role_default(Role::Service));
    }
}
