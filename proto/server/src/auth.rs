//! Bearer-JWT authentication as a tower layer, and the caller's identity.
//!
//! The layer verifies `authorization: Bearer …` on every call except health and
//! reflection, and puts a [`Principal`] into the request extensions; handlers then check
//! the role and the namespace grants. Tokens carry `sub`, `role` (`admin`, `service` or
//! `user`), `exp` and, optionally, `namespaces`: the [`Grants`] of the caller.
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

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    /// Namespace grants; absent: the role's default ([`Grants::role_default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Grants>,
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
        Ok(Principal::new(
            data.claims.sub,
            data.claims.role,
            data.claims.namespaces,
        ))
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

/// Mints an HS256 token (operators' `token` command, tests, the demo) without a
/// `namespaces` claim: the role's default grants.
pub fn issue_hs256(
    secret: &[u8],
    subject: &str,
    role: Role,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    issue_hs256_granted(secret, subject, role, None, ttl_secs)
}

/// Mints an HS256 token carrying `grants` as its `namespaces` claim (`None`: no claim).
pub fn issue_hs256_granted(
    secret: &[u8],
    subject: &str,
    role: Role,
    grants: Option<&Grants>,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        sub: subject.into(),
        role,
        exp: now + ttl_secs,
        namespaces: grants.cloned(),
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
        assert_eq!(p, Principal::new("alice", Role::User, None));

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
            namespaces: None,
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

    fn granted(role: Role, read: &[&str], write: &[&str]) -> Principal {
        let secret = b"0123456789abcdef0123";
        let grants = Grants {
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
        };
        let t = issue_hs256_granted(secret, "caller", role, Some(&grants), 60).unwrap();
        Verifier::hs256(secret)
            .verify(Some(&format!("Bearer {t}")))
            .unwrap()
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
            Verifier::hs256(b"0123456789abcdef0123")
                .verify(Some(&format!("Bearer {t}")))
                .unwrap()
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
    /// Registry namespace the token may read (repeatable; `*`: every namespace).
    #[arg(long = "read-namespace", value_name = "NAMESPACE")]
    pub read_namespaces: Vec<String>,
    /// Registry namespace the token may read and write (repeatable; `*`: every namespace).
    /// Without `--read-namespace` or `--write-namespace` the token carries no grants and
    /// gets its role's default: `default` only.
    #[arg(long = "write-namespace", value_name = "NAMESPACE")]
    pub write_namespaces: Vec<String>,
}

impl TokenArgs {
    pub fn mint(&self) -> anyhow::Result<String> {
        let bytes = std::fs::read(&self.jwt_secret_file).with_context(|| {
            format!(
                "cannot read --jwt-secret-file {}",
                self.jwt_secret_file.display()
            )
        })?;
        let grants =
            (!self.read_namespaces.is_empty() || !self.write_namespaces.is_empty()).then(|| {
                Grants {
                    read: self.read_namespaces.clone(),
                    write: self.write_namespaces.clone(),
                }
            });
        issue_hs256_granted(
            trim_secret(&bytes),
            &self.subject,
            self.role,
            grants.as_ref(),
            self.ttl_seconds,
        )
    }
}
