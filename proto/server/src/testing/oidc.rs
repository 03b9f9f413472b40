//! A real OpenID Provider for tests: `oidc-provider` from npm, run by
//! `tests/oidc/provider.mjs` on loopback (installed into `.tools/oidc` by
//! `tests/setup.sh`). It issues client-credentials JWT access tokens for audience
//! [`AUDIENCE`] signed with RS256, ES256 or EdDSA, rotates its keys on request, and forges
//! the tokens no provider would issue. The script's header lists its clients.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The audience of the provider's tokens.
pub const AUDIENCE: &str = "capstan-registry";
/// Resource indicators (RFC 8707): each gets tokens signed with its algorithm.
pub const RS256: &str = "https://rs256.capstan.test";
pub const ES256: &str = "https://es256.capstan.test";
pub const EDDSA: &str = "https://eddsa.capstan.test";
/// Tokens for audience `other-api`.
pub const OTHER_AUDIENCE: &str = "https://other.capstan.test";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running provider; dropping it ends the process.
pub struct OidcProvider {
    pub issuer: String,
    http: reqwest::Client,
    _process: Child,
}

impl OidcProvider {
    /// Starts a provider on a free loopback port. Panics, saying how to install what is
    /// missing, when Node.js or the provider package is not there.
    pub async fn start() -> Self {
        let root = workspace();
        let tools = root.join(".tools/oidc");
        assert!(
            tools.join("node_modules/oidc-provider/package.json").exists(),
            "the OpenID Provider of the auth tests is missing from {}: run tests/setup.sh (it needs Node.js 20+ and npm)",
            tools.display()
        );
        let mut process = Command::new("node")
            .arg(root.join("tests/oidc/provider.mjs"))
            .env("OIDC_TOOLS", &tools)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run node ({e}): install Node.js 20+ (apt-get install nodejs npm), then run tests/setup.sh")
            });
        let stdout = process.stdout.take().expect("piped stdout");
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the OpenID Provider did not start within 30 s")
        .expect("reading the OpenID Provider's first line");
        let started: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("the OpenID Provider printed {line:?}, not its issuer: {e}")
        });
        let issuer = started["issuer"]
            .as_str()
            .expect("the issuer in the provider's first line")
            .to_string();
        Self {
            issuer,
            http: reqwest::Client::new(),
            _process: process,
        }
    }

    /// The flags of a server that accepts this provider's tokens: its admins, writers,
    /// readers and services mapped onto the roles.
    pub fn server_flags(&self) -> Vec<String> {
        [
            "--oidc-issuer",
            &self.issuer,
            "--oidc-audience",
            AUDIENCE,
            "--oidc-roles-claim",
            "realm_access.roles",
            "--oidc-role-map",
            "capstan-admins=admin,capstan-writers=service,capstan-services=service,capstan-readers=user",
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    /// A client-credentials access token of `client` for `resource`.
    pub async fn token(&self, client: &str, resource: &str) -> String {
        let response = self
            .http
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", "secret"),
                ("resource", resource),
            ])
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("token response JSON");
        assert!(
            status.is_success(),
            "token request for {client}: {status} {body}"
        );
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// A token the provider would never issue: `wrong-kid`, `wrong-issuer`, `none`,
    /// `hs256-public`.
    pub async fn forge(&self, kind: &str) -> String {
        self.get(&format!("/test/forge?kind={kind}")).await
    }

    /// New signing keys (the old stay published); their `kid`s.
    pub async fn rotate(&self) -> Vec<String> {
        let response = self
            .http
            .post(format!("{}/test/rotate", self.issuer))
            .send()
            .await
            .expect("rotate");
        let body: serde_json::Value = response.json().await.expect("rotate JSON");
        body["kids"]
            .as_array()
            .expect("kids")
            .iter()
            .map(|k| k.as_str().expect("kid").to_string())
            .collect()
    }

    /// How often the JWKS was fetched so far.
    pub async fn jwks_requests(&self) -> u64 {
        let body: serde_json::Value =
            serde_json::from_str(&self.get("/test/stats").await).expect("stats JSON");
        body["jwksRequests"].as_u64().expect("jwksRequests")
    }

    async fn get(&self, path: &str) -> String {
        let response = self
            .http
            .get(format!("{}{path}", self.issuer))
            .send()
            .await
            .expect("provider request");
        let status = response.status();
        let text = response.text().await.expect("provider response");
        assert!(status.is_success(), "GET {path}: {status} {text}");
        text
    }
}

/// The claims of a token, unverified (to name what a test sees).
pub fn claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&json).expect("JSON claims")
}
