//! Tokens verified with a key from a file (`--jwt-secret-file`): HS256 with the file's
//! bytes as the secret, or RS256 when the file is a PEM public key. The services mint
//! the HS256 ones themselves (the `token` command, the demo, tests).
//!
//! These tokens carry `sub`, `role` (`admin`, `service` or `user`), `exp` and, optionally,
//! `namespaces`: the caller's [`Grants`]. They carry no `iss`: a token that names an issuer
//! is one of an OpenID issuer's ([`super::oidc`]).

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::{Grants, Principal, Role};

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    /// Namespace grants; absent: the role's default ([`Grants::role_default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Grants>,
}

/// The key of `--jwt-secret-file` and how tokens signed with it are checked.
pub(super) struct KeyFile {
    key: DecodingKey,
    validation: Validation,
}

impl KeyFile {
    /// HS256 with the file's bytes as the key, or RS256 when the file is a PEM public key.
    pub(super) fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read --jwt-secret-file {}", path.display()))?;
        if bytes.starts_with(b"-----BEGIN") {
            let key = DecodingKey::from_rsa_pem(&bytes).with_context(|| {
                format!(
                    "--jwt-secret-file {} is PEM but not an RSA public key",
                    path.display()
                )
            })?;
            Ok(Self {
                key,
                validation: Validation::new(Algorithm::RS256),
            })
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

    pub(super) fn hs256(secret: &[u8]) -> Self {
        Self {
            key: DecodingKey::from_secret(secret),
            validation: Validation::new(Algorithm::HS256),
        }
    }

    #[allow(clippy::result_large_err)]
    pub(super) fn verify(&self, token: &str) -> Result<Principal, Status> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
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
