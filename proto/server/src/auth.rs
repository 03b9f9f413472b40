//! Bearer-JWT authentication as a tower layer, and the caller's identity.
//!
//! The layer verifies `authorization: Bearer …` on every call except health and
//! reflection, and puts a [`Principal`] into the request extensions; handlers then check
//! the role. Tokens carry `sub`, `role` (`admin`, `service` or `user`) and `exp`.

use std::{
    path::Path,
    sync::Arc,
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::{body::Body, Status};
use tower::{Layer, Service};

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

/// Who is calling. With auth disabled every caller is `anonymous` with the admin role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
}

impl Principal {
    pub fn anonymous_admin() -> Self {
        Self {
            subject: "anonymous".into(),
            role: Role::Admin,
        }
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

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
}

/// Verifies tokens; `None` inside means auth is disabled.
#[derive(Clone)]
pub struct Verifier(Option<Arc<(DecodingKey, Validation)>>);

impl Verifier {
    pub fn disabled() -> Self {
        tracing::warn!("authentication is DISABLED (--auth disabled): every caller is an admin");
        Self(None)
    }

    /// HS256 with the file's bytes as the key, or RS256 when the file is a PEM public key.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read --jwt-secret-file {}", path.display()))?;
        if bytes.starts_with(b"-----BEGIN") {
            let key = DecodingKey::from_rsa_pem(&bytes).with_context(|| {
                format!(
                    "--jwt-secret-file {} is PEM but not an RSA public key",
                    path.display()
                )
            })?;
            Ok(Self(Some(Arc::new((
                key,
                Validation::new(Algorithm::RS256),
            )))))
        } else {
            let secret = trim_secret(&bytes);
            anyhow::ensure!(
                secret.len() >= 16,
                "--jwt-secret-file {} holds {} bytes; an HS256 key needs at least 16",
                path.display(),
                secret.len()
            );
            Ok(Self::hs256(secret))
        }
    }

    pub fn hs256(secret: &[u8]) -> Self {
        Self(Some(Arc::new((
            DecodingKey::from_secret(secret),
            Validation::new(Algorithm::HS256),
        ))))
    }

    #[allow(clippy::result_large_err)]
    pub fn verify(&self, authorization: Option<&str>) -> Result<Principal, Status> {
        let Some(inner) = &self.0 else {
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
            })?;
        let data = jsonwebtoken::decode::<Claims>(token.trim(), &inner.0, &inner.1)
            .map_err(|e| Status::unauthenticated(format!("invalid bearer token: {e}")))?;
        if data.claims.sub.is_empty() {
            return Err(Status::unauthenticated("token has an empty subject"));
        }
        Ok(Principal {
            subject: data.claims.sub,
            role: data.claims.role,
        })
    }
}

/// Secret files usually end with a newline that is not part of the key.
pub fn trim_secret(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Mints an HS256 token (operators' `token` command, tests, the demo).
pub fn issue_hs256(
    secret: &[u8],
    subject: &str,
    role: Role,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        sub: subject.into(),
        role,
        exp: now + ttl_secs,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
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
    type Future = futures::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if is_public(req.uri().path()) {
            return futures::future::Either::Left(self.inner.call(req));
        }
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.verifier.verify(header) {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                futures::future::Either::Left(self.inner.call(req))
            }
            Err(status) => {
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_own_tokens_and_refuses_others() {
        let v = Verifier::hs256(b"0123456789abcdef0123");
        let t = issue_hs256(b"0123456789abcdef0123", "alice", Role::User, 60).unwrap();
        let p = v.verify(Some(&format!("Bearer {t}"))).unwrap();
        assert_eq!(
            p,
            Principal {
                subject: "alice".into(),
                role: Role::User
            }
        );

        let other = issue_hs256(b"another-secret-0123456", "alice", Role::Admin, 60).unwrap();
        for bad in [
            None,
            Some("Basic abc".to_string()),
            Some(format!("Bearer {other}")),
            Some("Bearer x.y.z".into()),
        ] {
            let err = v.verify(bad.as_deref()).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn expired_tokens_are_refused() {
        let claims = Claims {
            sub: "a".into(),
            role: Role::Admin,
            exp: 1_000,
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef"),
        )
        .unwrap();
        let err = Verifier::hs256(b"0123456789abcdef")
            .verify(Some(&format!("Bearer {t}")))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}

/// `token` subcommand of both binaries: mints an HS256 token for operators and scripts.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// HMAC key file (the same the server verifies with).
    #[arg(long, env = "CAPSTAN_JWT_SECRET_FILE")]
    pub jwt_secret_file: std::path::PathBuf,
    /// `sub` claim: the user id for the `user` role.
    #[arg(long, default_value = "operator")]
    pub subject: String,
    /// admin, service or user.
    #[arg(long, default_value = "admin")]
    pub role: Role,
    #[arg(long, default_value_t = 3600)]
    pub ttl_seconds: u64,
}

impl TokenArgs {
    pub fn mint(&self) -> anyhow::Result<String> {
        let bytes = std::fs::read(&self.jwt_secret_file).with_context(|| {
            format!(
                "cannot read --jwt-secret-file {}",
                self.jwt_secret_file.display()
            )
        })?;
        issue_hs256(
            trim_secret(&bytes),
            &self.subject,
            self.role,
            self.ttl_seconds,
        )
    }
}
