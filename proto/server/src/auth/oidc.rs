//! Tokens of OpenID issuers (a company IdP, a Kubernetes cluster's service-account
//! issuer), verified with the public keys of the issuer's JWKS ([`super::jwks`]), and
//! their claims mapped onto a [`Principal`]: the user id, the role, the namespace grants.
//!
//! A token is one of an issuer's when its `iss` names it. It must be signed with one of
//! the issuer's public keys (RS*, PS*, ES256, ES384 or EdDSA; never HS* or `none`), carry
//! the configured audience in `aud`, and be within `exp` (and `nbf`) give or take the
//! leeway.

use std::{collections::HashMap, fmt, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tonic::Status;
use url::Url;

use super::{
    jwks::{check_fetch_url, IssuerKeys, KeySource, Timing},
    Grants, Principal, Role,
};

const ROLES_CLAIM: &str = "roles";
const USER_CLAIM: &str = "sub";
const NAMESPACES_CLAIM: &str = "namespaces";
const LEEWAY_SECONDS: u64 = 30;
const JWKS_REFRESH_SECONDS: u64 = 300;
const JWKS_MIN_REFETCH_SECONDS: u64 = 10;

/// The OpenID settings of both services; each has an environment twin. The default
/// names no issuer (the flags' defaults otherwise).
#[derive(Debug, Clone, clap::Args)]
pub struct OidcArgs {
    /// An OpenID issuer whose tokens are accepted (repeatable, or comma-separated in the
    /// environment): `ISSUER`, its keys found through
    /// `ISSUER/.well-known/openid-configuration`, or `ISSUER=JWKS_URL`. Tokens are its when
    /// their `iss` is exactly ISSUER.
    #[arg(
        long = "oidc-issuer",
        env = "CAPSTAN_OIDC_ISSUERS",
        value_name = "ISSUER[=JWKS_URL]",
        value_delimiter = ','
    )]
    pub issuers: Vec<String>,

    /// The audience issuer tokens must name in `aud` (required with --oidc-issuer).
    #[arg(long = "oidc-audience", env = "CAPSTAN_OIDC_AUDIENCE")]
    pub audience: Option<String>,

    /// Claim(s) holding the caller's roles, as a path (`realm_access.roles`, `groups`,
    /// `scope`; a claim whose whole name matches wins over a path). Arrays give one value
    /// per item, strings one per space-separated word.
    #[arg(
        long = "oidc-roles-claim",
        env = "CAPSTAN_OIDC_ROLES_CLAIM",
        value_name = "PATH",
        value_delimiter = ',',
        default_value = ROLES_CLAIM
    )]
    pub roles_claims: Vec<String>,

    /// Maps a value of the roles claim to a Capstan role (repeatable): `VALUE=ROLE` with
    /// ROLE admin, service or user. Without a map the values `admin`, `service` and `user`
    /// are the roles; with one, only mapped values count. The strongest role found wins.
    #[arg(
        long = "oidc-role-map",
        env = "CAPSTAN_OIDC_ROLE_MAP",
        value_name = "VALUE=ROLE",
        value_delimiter = ','
    )]
    pub role_map: Vec<String>,

    /// Claim holding the user id (a path, as for roles).
    #[arg(
        long = "oidc-user-claim",
        env = "CAPSTAN_OIDC_USER_CLAIM",
        value_name = "PATH",
        default_value = USER_CLAIM
    )]
    pub user_claim: String,

    /// Claim holding namespace grants as `{"read": [...], "write": [...]}`.
    #[arg(
        long = "oidc-namespaces-claim",
        env = "CAPSTAN_OIDC_NAMESPACES_CLAIM",
        value_name = "PATH",
        default_value = NAMESPACES_CLAIM
    )]
    pub namespaces_claim: String,

    /// Claim listing namespaces the caller may read (an array, or space-separated words).
    #[arg(
        long = "oidc-read-namespaces-claim",
        env = "CAPSTAN_OIDC_READ_NAMESPACES_CLAIM",
        value_name = "PATH"
    )]
    pub read_namespaces_claim: Option<String>,

    /// Claim listing namespaces the caller may read and write.
    #[arg(
        long = "oidc-write-namespaces-claim",
        env = "CAPSTAN_OIDC_WRITE_NAMESPACES_CLAIM",
        value_name = "PATH"
    )]
    pub write_namespaces_claim: Option<String>,

    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(
        long = "oidc-leeway-seconds",
        env = "CAPSTAN_OIDC_LEEWAY_SECONDS",
        default_value_t = LEEWAY_SECONDS
    )]
    pub leeway_seconds: u64,

    /// PEM CA certificate(s) trusted, besides the system's, when fetching keys (a
    /// cluster's own CA).
    #[arg(long = "oidc-ca-file", env = "CAPSTAN_OIDC_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// A file whose token is sent as `Authorization: Bearer` when fetching keys (read at
    /// every fetch; a Kubernetes API server's JWKS wants the pod's service-account token).
    #[arg(long = "oidc-fetch-token-file", env = "CAPSTAN_OIDC_FETCH_TOKEN_FILE")]
    pub fetch_token_file: Option<PathBuf>,

    /// Cached keys older than this are fetched again, so withdrawn keys stop working.
    #[arg(
        long = "oidc-jwks-refresh-seconds",
        env = "CAPSTAN_OIDC_JWKS_REFRESH_SECONDS",
        default_value_t = JWKS_REFRESH_SECONDS
    )]
    pub jwks_refresh_seconds: u64,

    /// A token naming an unknown key fetches the keys again, at most once per this long.
    #[arg(
        long = "oidc-jwks-min-refetch-seconds",
        env = "CAPSTAN_OIDC_JWKS_MIN_REFETCH_SECONDS",
        default_value_t = JWKS_MIN_REFETCH_SECONDS
    )]
    pub jwks_min_refetch_seconds: u64,
}

impl Default for OidcArgs {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            audience: None,
            roles_claims: vec![ROLES_CLAIM.into()],
            role_map: Vec::new(),
            user_claim: USER_CLAIM.into(),
            namespaces_claim: NAMESPACES_CLAIM.into(),
            read_namespaces_claim: None,
            write_namespaces_claim: None,
            leeway_seconds: LEEWAY_SECONDS,
            ca_file: None,
            fetch_token_file: None,
            jwks_refresh_seconds: JWKS_REFRESH_SECONDS,
            jwks_min_refetch_seconds: JWKS_MIN_REFETCH_SECONDS,
        }
    }
}

/// A claim named by a path: `realm_access.roles` is `roles` inside `realm_access`, unless
/// a claim is named `realm_access.roles` itself (IdPs that namespace claim names with
/// URLs, such as `https://example.com/roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClaimPath(String);

impl ClaimPath {
    fn parse(flag: &str, path: &str) -> anyhow::Result<Self> {
        let path = path.trim();
        if path.is_empty() || path.split('.').any(str::is_empty) {
            bail!("{flag} {path:?} is no claim path (names joined by dots, such as realm_access.roles)");
        }
        Ok(Self(path.to_string()))
    }

    fn get<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        if let Some(v) = claims.get(&self.0) {
            return Some(v);
        }
        let mut parts = self.0.split('.');
        let mut value = claims.get(parts.next()?)?;
        for part in parts {
            value = value.as_object()?.get(part)?;
        }
        Some(value)
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The values of a list claim: the strings of an array, or the words of a string.
fn values(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => s.split_whitespace().collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn strength(role: Role) -> u8 {
    match role {
        Role::Admin => 2,
        Role::Service => 1,
        Role::User => 0,
    }
}

/// How claims become a [`Principal`].
#[derive(Debug)]
struct ClaimMapping {
    user: ClaimPath,
    roles: Vec<ClaimPath>,
    /// `None`: the values `admin`, `service` and `user` themselves.
    role_map: Option<HashMap<String, Role>>,
    namespaces: ClaimPath,
    read_namespaces: Option<ClaimPath>,
    write_namespaces: Option<ClaimPath>,
}

impl ClaimMapping {
    fn from_args(args: &OidcArgs) -> anyhow::Result<Self> {
        let roles = args
            .roles_claims
            .iter()
            .map(|p| ClaimPath::parse("--oidc-roles-claim", p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if roles.is_empty() {
            bail!("--oidc-roles-claim (CAPSTAN_OIDC_ROLES_CLAIM) names no claim");
        }
        let role_map = if args.role_map.is_empty() {
            None
        } else {
            let mut map = HashMap::new();
            for entry in &args.role_map {
                let (value, role) = entry.trim().rsplit_once('=').with_context(|| {
                    format!(
                        "--oidc-role-map (CAPSTAN_OIDC_ROLE_MAP) entry {entry:?} is not VALUE=ROLE"
                    )
                })?;
                if value.is_empty() {
                    bail!("--oidc-role-map (CAPSTAN_OIDC_ROLE_MAP) entry {entry:?} maps an empty value");
                }
                let role: Role = role.parse().map_err(|e| {
                    anyhow::anyhow!("--oidc-role-map (CAPSTAN_OIDC_ROLE_MAP) entry {entry:?}: {e}")
                })?;
                if let Some(before) = map.insert(value.to_string(), role) {
                    if before != role {
                        bail!("--oidc-role-map (CAPSTAN_OIDC_ROLE_MAP) maps {value:?} twice, to {before:?} and {role:?}");
                    }
                }
            }
            Some(map)
        };
        let optional =
            |flag, p: &Option<String>| p.as_deref().map(|p| ClaimPath::parse(flag, p)).transpose();
        Ok(Self {
            user: ClaimPath::parse("--oidc-user-claim", &args.user_claim)?,
            roles,
            role_map,
            namespaces: ClaimPath::parse("--oidc-namespaces-claim", &args.namespaces_claim)?,
            read_namespaces: optional("--oidc-read-namespaces-claim", &args.read_namespaces_claim)?,
            write_namespaces: optional(
                "--oidc-write-namespaces-claim",
                &args.write_namespaces_claim,
            )?,
        })
    }

    fn role_of(&self, value: &str) -> Option<Role> {
        match &self.role_map {
            Some(map) => map.get(value).copied(),
            None => value.parse().ok(),
        }
    }

    #[allow(clippy::result_large_err)]
    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, Status> {
        let subject = match self.user.get(claims) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(Status::unauthenticated(format!(
                    "invalid bearer token: no user id in claim `{}` (a non-empty string)",
                    self.user
                )))
            }
        };
        let found: Vec<&str> = self
            .roles
            .iter()
            .filter_map(|path| path.get(claims))
            .flat_map(values)
            .collect();
        let role = found
            .iter()
            .filter_map(|v| self.role_of(v))
            .max_by_key(|r| strength(*r))
            .ok_or_else(|| {
                let claims: Vec<String> = self.roles.iter().map(ToString::to_string).collect();
                Status::permission_denied(format!(
                    "{subject:?} has no Capstan role: claim {} holds {found:?}, and none of it {}",
                    claims.join(", "),
                    match self.role_map {
                        Some(_) => "is mapped to a role (--oidc-role-map)",
                        None => "is admin, service or user",
                    }
                ))
            })?;
        Ok(Principal::new(subject, role, self.grants(claims)?))
    }

    /// The grants the claims carry; `None` when none of the claims is present (the role's
    /// default, as for tokens without the `namespaces` claim).
    #[allow(clippy::result_large_err)]
    fn grants(&self, claims: &Map<String, Value>) -> Result<Option<Grants>, Status> {
        let mut grants = None::<Grants>;
        if let Some(v) = self.namespaces.get(claims) {
            let g = Grants::deserialize(v).map_err(|e| {
                Status::unauthenticated(format!(
                    "invalid bearer token: claim `{}` is not {{\"read\": [...], \"write\": [...]}}: {e}",
                    self.namespaces
                ))
            })?;
            grants = Some(g);
        }
        for (path, write) in [
            (&self.read_namespaces, false),
            (&self.write_namespaces, true),
        ] {
            if let Some(v) = path.as_ref().and_then(|p| p.get(claims)) {
                let g = grants.get_or_insert_with(Grants::default);
                let list = if write { &mut g.write } else { &mut g.read };
                list.extend(values(v).into_iter().map(String::from));
            }
        }
        Ok(grants)
    }
}

/// The issuers accepted and how their claims map.
pub(super) struct Oidc {
    issuers: Vec<Arc<IssuerKeys>>,
    claims: ClaimMapping,
}

impl Oidc {
    /// The settings checked; `None` when no issuer is configured.
    pub(super) fn from_args(args: &OidcArgs) -> anyhow::Result<Option<Self>> {
        if args.issuers.is_empty() {
            let stray = [
                ("--oidc-audience", args.audience.is_some()),
                ("--oidc-role-map", !args.role_map.is_empty()),
                (
                    "--oidc-read-namespaces-claim",
                    args.read_namespaces_claim.is_some(),
                ),
                (
                    "--oidc-write-namespaces-claim",
                    args.write_namespaces_claim.is_some(),
                ),
                ("--oidc-ca-file", args.ca_file.is_some()),
                ("--oidc-fetch-token-file", args.fetch_token_file.is_some()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, set)| *set) {
                bail!("{flag} is set but no --oidc-issuer (CAPSTAN_OIDC_ISSUERS) is: name the issuers whose tokens are accepted");
            }
            return Ok(None);
        }
        let audience = match args.audience.as_deref().map(str::trim) {
            Some(a) if !a.is_empty() => a,
            _ => bail!("--oidc-issuer needs --oidc-audience (CAPSTAN_OIDC_AUDIENCE): the audience (`aud`) tokens must be meant for, such as capstan-registry"),
        };
        if args.leeway_seconds > 300 {
            bail!("--oidc-leeway-seconds (CAPSTAN_OIDC_LEEWAY_SECONDS) is {}; more than 300 would keep expired tokens alive", args.leeway_seconds);
        }
        if args.jwks_refresh_seconds == 0
            || args.jwks_min_refetch_seconds > args.jwks_refresh_seconds
        {
            bail!("--oidc-jwks-refresh-seconds must be positive and at least --oidc-jwks-min-refetch-seconds");
        }
        let claims = ClaimMapping::from_args(args)?;
        let http = http_client(args)?;
        if let Some(path) = &args.fetch_token_file {
            std::fs::metadata(path).with_context(|| {
                format!(
                    "cannot read --oidc-fetch-token-file (CAPSTAN_OIDC_FETCH_TOKEN_FILE) {}",
                    path.display()
                )
            })?;
        }
        let timing = Timing {
            refresh: Duration::from_secs(args.jwks_refresh_seconds),
            min_refetch: Duration::from_secs(args.jwks_min_refetch_seconds),
        };
        let mut issuers: Vec<Arc<IssuerKeys>> = Vec::new();
        for spec in &args.issuers {
            let (issuer, source) = parse_issuer(spec)?;
            if issuers.iter().any(|i| i.issuer == issuer) {
                bail!("--oidc-issuer names {issuer} twice");
            }
            let mut base = Validation::new(Algorithm::RS256);
            base.set_issuer(&[&issuer]);
            base.set_audience(&[audience]);
            base.leeway = args.leeway_seconds;
            base.validate_nbf = true;
            issuers.push(Arc::new(IssuerKeys::new(
                issuer,
                source,
                http.clone(),
                args.fetch_token_file.clone(),
                timing,
                base,
            )));
        }
        Ok(Some(Self { issuers, claims }))
    }

    /// Fetches every issuer's keys in the background, so the first calls find them and
    /// a wrong URL shows in the log at start.
    pub(super) fn warm_up(&self) {
        for issuer in &self.issuers {
            issuer.refresh_in_background();
        }
    }

    /// Verifies `token`, whose (unverified) `iss` is `iss`.
    pub(super) async fn verify(&self, token: &str, iss: &str) -> Result<Principal, Status> {
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "invalid bearer token: issuer {iss:?} is not accepted"
                ))
            })?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Status::unauthenticated(format!("invalid bearer token: {e}")))?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(Status::unauthenticated(format!(
                "invalid bearer token: {:?} is refused from an OpenID issuer (only public-key signatures are)",
                header.alg
            )));
        }
        let key = issuer.key(header.kid.as_deref(), header.alg).await?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(|e| Status::unauthenticated(format!("invalid bearer token: {e}")))?;
        self.claims.principal(&data.claims)
    }
}

fn http_client(args: &OidcArgs) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        // A redirect could lead to plain HTTP or elsewhere; IdPs name their JWKS directly.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).with_context(|| {
            format!(
                "cannot read --oidc-ca-file (CAPSTAN_OIDC_CA_FILE) {}",
                path.display()
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!("--oidc-ca-file {} holds no PEM certificate", path.display())
        })?;
        if certs.is_empty() {
            bail!("--oidc-ca-file {} holds no PEM certificate", path.display());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .context("cannot set up the HTTP client that fetches issuer keys")
}

/// `ISSUER` (keys through discovery) or `ISSUER=JWKS_URL`.
fn parse_issuer(spec: &str) -> anyhow::Result<(String, KeySource)> {
    let spec = spec.trim();
    let (issuer, jwks) = match spec.split_once('=') {
        Some((issuer, jwks)) => (issuer, Some(jwks)),
        None => (spec, None),
    };
    let url = Url::parse(issuer).with_context(|| {
        format!("--oidc-issuer (CAPSTAN_OIDC_ISSUERS) {issuer:?} is no URL: expected ISSUER or ISSUER=JWKS_URL")
    })?;
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--oidc-issuer {issuer}: an issuer has no query or fragment");
    }
    let source = match jwks {
        Some(jwks) => {
            let jwks = Url::parse(jwks)
                .with_context(|| format!("--oidc-issuer {issuer}: JWKS URL {jwks:?} is no URL"))?;
            check_fetch_url(&jwks).with_context(|| format!("--oidc-issuer {issuer}"))?;
            KeySource::Jwks(jwks)
        }
        None => {
            check_fetch_url(&url).with_context(|| format!("--oidc-issuer {issuer}"))?;
            let discovery = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            KeySource::Discovery(Url::parse(&discovery)?)
        }
    };
    Ok((issuer.to_string(), source))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        oidc: OidcArgs,
    }

    fn args(extra: &[&str]) -> OidcArgs {
        Cli::try_parse_from(std::iter::once("x").chain(extra.iter().copied()))
            .unwrap()
            .oidc
    }

    fn mapping(extra: &[&str]) -> ClaimMapping {
        ClaimMapping::from_args(&args(extra)).unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn roles_come_from_claim_paths_through_the_map() {
        let m = mapping(&[
            "--oidc-roles-claim",
            "realm_access.roles,groups",
            "--oidc-role-map",
            "capstan-admins=admin,ci=service",
            "--oidc-role-map",
            "readers=user",
        ]);
        let p = m
            .principal(&claims(json!({
                "sub": "u1", "realm_access": {"roles": ["offline_access", "readers"]}, "groups": ["ci"]
            })))
            .unwrap();
        assert_eq!((p.subject.as_str(), p.role), ("u1", Role::Service));
        assert_eq!(p.grants, Grants::role_default(Role::Service));
        // With a map, the literal names count for nothing.
        let err = m
            .principal(&claims(json!({"sub": "u2", "groups": ["admin"]})))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("\"admin\""), "{}", err.message());
    }

    #[test]
    fn without_a_map_the_role_names_count_and_strings_split_into_words() {
        let m = mapping(&[
            "--oidc-roles-claim",
            "scope",
            "--oidc-user-claim",
            "client_id",
        ]);
        let p = m
            .principal(&claims(
                json!({"client_id": "bot", "scope": "openid user admin"}),
            ))
            .unwrap();
        assert_eq!((p.subject.as_str(), p.role), ("bot", Role::Admin));
        let err = m.principal(&claims(json!({"scope": "admin"}))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_claim_named_with_dots_wins_over_the_path() {
        let m = mapping(&["--oidc-roles-claim", "https://capstan.example/roles"]);
        let p = m
            .principal(&claims(
                json!({"sub": "a", "https://capstan.example/roles": ["user"]}),
            ))
            .unwrap();
        assert_eq!(p.role, Role::User);
    }

    #[test]
    fn namespace_claims_become_grants() {
        let m = mapping(&[
            "--oidc-read-namespaces-claim",
            "capstan.read",
            "--oidc-write-namespaces-claim",
            "capstan.write",
        ]);
        let p = m
            .principal(&claims(json!({
                "sub": "a", "roles": ["service"],
                "namespaces": {"read": ["shared"]},
                "capstan": {"read": ["team-b"], "write": "team-a"}
            })))
            .unwrap();
        assert_eq!(p.grants.read, ["shared", "team-b"]);
        assert_eq!(p.grants.write, ["team-a"]);
        assert!(p.can_write("team-a") && p.can_read("team-b") && !p.can_read("default"));
        let bad = m
            .principal(&claims(
                json!({"sub": "a", "roles": ["user"], "namespaces": ["x"]}),
            ))
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn misconfiguration_is_refused_with_the_flag_named() {
        let refused = |extra: &[&str], says: &str| {
            let err = match Oidc::from_args(&args(extra)) {
                Ok(_) => panic!("{extra:?} was accepted"),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains(says), "{extra:?}: {err}");
        };
        refused(
            &["--oidc-issuer", "https://idp.example.com"],
            "--oidc-audience",
        );
        refused(&["--oidc-audience", "x"], "no --oidc-issuer");
        refused(
            &["--oidc-issuer", "idp.example.com", "--oidc-audience", "x"],
            "is no URL",
        );
        refused(
            &[
                "--oidc-issuer",
                "http://idp.example.com",
                "--oidc-audience",
                "x",
            ],
            "plain HTTP",
        );
        refused(
            &[
                "--oidc-issuer",
                "https://a.example=http://b.example/jwks",
                "--oidc-audience",
                "x",
            ],
            "plain HTTP",
        );
        let https = [
            "--oidc-issuer",
            "https://idp.example.com",
            "--oidc-audience",
            "x",
        ];
        fn with<'a>(https: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            [https, extra].concat()
        }
        refused(&with(&https, &["--oidc-role-map", "admins"]), "VALUE=ROLE");
        refused(
            &with(&https, &["--oidc-role-map", "admins=root"]),
            "unknown role",
        );
        refused(
            &with(&https, &["--oidc-role-map", "a=admin,a=user"]),
            "twice",
        );
        refused(
            &with(&https, &["--oidc-roles-claim", "realm_access..roles"]),
            "no claim path",
        );
        refused(
            &with(&https, &["--oidc-leeway-seconds", "3600"]),
            "expired tokens",
        );
        refused(
            &with(&https, &["--oidc-ca-file", "/nonexistent/ca.pem"]),
            "--oidc-ca-file",
        );
        refused(
            &with(&https, &["--oidc-issuer", "https://idp.example.com"]),
            "twice",
        );
        assert!(Oidc::from_args(&args(&https)).unwrap().is_some());
        assert!(Oidc::from_args(&args(&[])).unwrap().is_none());
        let (parsed, default) = (args(&[]), OidcArgs::default());
        assert_eq!(
            format!("{parsed:?}"),
            format!("{default:?}"),
            "the default is the flags' default"
        );
    }

    #[test]
    fn issuers_find_their_keys_by_discovery_or_a_jwks_url() {
        let (iss, source) = parse_issuer("https://idp.example.com/realms/capstan/").unwrap();
        assert_eq!(iss, "https://idp.example.com/realms/capstan/");
        assert!(matches!(source, KeySource::Discovery(u)
            if u.as_str() == "https://idp.example.com/realms/capstan/.well-known/openid-configuration"));
        let (iss, source) = parse_issuer(
            "https://kubernetes.default.svc.cluster.local=https://kubernetes.default.svc/openid/v1/jwks",
        )
        .unwrap();
        assert_eq!(iss, "https://kubernetes.default.svc.cluster.local");
        assert!(matches!(source, KeySource::Jwks(u)
            if u.as_str() == "https://kubernetes.default.svc/openid/v1/jwks"));
    }
}
