//! Flags shared by both services. Every flag has an environment twin (`CAPSTAN_…`) so
//! that Kubernetes manifests and scripts configure the binaries the same way.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::auth::OidcArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Bearer JWTs (`--jwt-secret-file`, `--oidc-issuer`) are required on every call but
    /// health and reflection.
    Jwt,
    /// Every caller is treated as an admin. Logged as a warning at start.
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Database URL: `sqlite://…` or `postgres://…` (default: a SQLite file in the data dir).
    #[arg(long, env = "CAPSTAN_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Local state: SQLite files, artifact blobs, graph files.
    #[arg(long, env = "CAPSTAN_DATA_DIR", default_value = ".capstan")]
    pub data_dir: PathBuf,

    /// Address of the Prometheus `/metrics` endpoint; unset: no endpoint.
    #[arg(long, env = "CAPSTAN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// `jwt` (default) or `disabled`.
    #[arg(long, env = "CAPSTAN_AUTH", value_enum, default_value = "jwt")]
    pub auth: AuthMode,

    /// HMAC key for HS256 tokens, or a PEM public key for RS256 (tokens without `iss`).
    #[arg(long, env = "CAPSTAN_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// OpenID issuers whose tokens are accepted, and how their claims map.
    #[command(flatten)]
    pub oidc: OidcArgs,

    /// PEM certificate chain; with `--tls-key-file` the server speaks TLS.
    #[arg(long, env = "CAPSTAN_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key for `--tls-cert-file`.
    #[arg(long, env = "CAPSTAN_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// On SIGTERM, how long in-flight calls may take before the process exits anyway.
    #[arg(long, env = "CAPSTAN_SHUTDOWN_DEADLINE_SECONDS", default_value_t = 20)]
    pub shutdown_deadline_seconds: u64,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "CAPSTAN_MAX_MESSAGE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, env = "CAPSTAN_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,

    /// Servers close connections older than this, so clients re-resolve and spread over pods.
    #[arg(long, env = "CAPSTAN_MAX_CONNECTION_AGE_SECONDS", default_value_t = 0)]
    pub max_connection_age_seconds: u64,

    /// `text` or `json` logs (filter with RUST_LOG).
    #[arg(long, env = "CAPSTAN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl CommonArgs {
    /// Checks what clap cannot, with a message that names the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.auth == AuthMode::Jwt
            && self.jwt_secret_file.is_none()
            && self.oidc.issuers.is_empty()
        {
            bail!(crate::auth::NO_KEY_SOURCE);
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                bail!("--database-url (CAPSTAN_DATABASE_URL) must start with sqlite: or postgres://, got {url:?}");
            }
        }
        if self.max_message_bytes < 64 * 1024 {
            bail!("--max-message-bytes (CAPSTAN_MAX_MESSAGE_BYTES) must be at least 65536");
        }
        if self.shutdown_deadline_seconds == 0 {
            bail!(
                "--shutdown-deadline-seconds (CAPSTAN_SHUTDOWN_DEADLINE_SECONDS) must be positive"
            );
        }
        std::fs::create_dir_all(&self.data_dir).with_context(|| {
            format!(
                "cannot create --data-dir (CAPSTAN_DATA_DIR) {}",
                self.data_dir.display()
            )
        })?;
        Ok(())
    }

    /// The database URL, defaulting to `{data_dir}/{file}` on SQLite.
    pub fn database_url_or(&self, file: &str) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join(file).display()),
        }
    }

    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_secs(self.shutdown_deadline_seconds)
    }
}

/// Parses a boolean flag value the way operators write it.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// A URL fit for logs: the password of `scheme://user:password@host…` becomes `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}://{user}:***{}", &url[..s], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact_url("postgres://capstan:s3cret@db:5432/capstan?sslmode=require"),
            "postgres://capstan:***@db:5432/capstan?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://capstan@db/x"),
            "postgres://capstan@db/x"
        );
        assert_eq!(
            redact_url("sqlite://data/r.db?mode=rwc"),
            "sqlite://data/r.db?mode=rwc"
        );
    }
}
