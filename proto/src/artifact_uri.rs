//! The one canonical artifact URI: `{namespace}/{model_type}-model_{key}.{ext}`.
//!
//! `key` is lowercase hex (12 to 128 characters; the registry uses the content's SHA-256),
//! the extension is optional. Both services format and parse URIs only through this
//! module, so no consumer ever meets a placeholder such as `demo/placeholder.joblib`.

use std::{fmt, str::FromStr, sync::LazyLock};

use regex::Regex;

const SEGMENT: &str = r"[a-z0-9][a-z0-9_.\-]{0,62}";
const MODEL_TYPE: &str = r"[a-z0-9][a-z0-9_]{0,63}";

static URI: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^(?P<ns>{SEGMENT}(?:/{SEGMENT})*)/(?P<mt>{MODEL_TYPE})-model_(?P<key>[0-9a-f]{{12,128}})(?:\.(?P<ext>[a-z0-9]{{1,16}}))?$"
    ))
    .expect("static artifact URI pattern compiles")
});
static NAMESPACE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"^{SEGMENT}(?:/{SEGMENT})*$")).expect("static namespace pattern")
});
static MODEL_TYPE_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{MODEL_TYPE}$")).expect("static model type pattern"));
static KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9a-f]{12,128}$").expect("static key pattern"));
static EXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]{1,16}$").expect("static extension pattern"));

/// Longest URI accepted; keeps a hostile input from costing more than a bounded match.
pub const MAX_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactUriError {
    #[error("artifact URI is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("artifact URI {0:?} is not `{{namespace}}/{{model_type}}-model_{{key}}.{{ext}}` with a lowercase hex key of at least 12 characters")]
    Malformed(String),
    #[error("namespace {0:?} must be `/`-separated segments of [a-z0-9][a-z0-9_.-]*")]
    Namespace(String),
    #[error("model type {0:?} must match [a-z0-9][a-z0-9_]{{0,63}}")]
    ModelType(String),
    #[error("key {0:?} must be 12 to 128 lowercase hex characters")]
    Key(String),
    #[error("extension {0:?} must match [a-z0-9]{{1,16}}")]
    Extension(String),
}

/// A parsed artifact URI; its `Display` is the canonical text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArtifactUri {
    namespace: String,
    model_type: String,
    key: String,
    ext: Option<String>,
}

impl ArtifactUri {
    pub fn new(
        namespace: &str,
        model_type: &str,
        key: &str,
        ext: Option<&str>,
    ) -> Result<Self, ArtifactUriError> {
        if !NAMESPACE.is_match(namespace) {
            return Err(ArtifactUriError::Namespace(namespace.into()));
        }
        if !MODEL_TYPE_RE.is_match(model_type) {
            return Err(ArtifactUriError::ModelType(model_type.into()));
        }
        if !KEY.is_match(key) {
            return Err(ArtifactUriError::Key(key.into()));
        }
        if let Some(ext) = ext {
            if !EXT.is_match(ext) {
                return Err(ArtifactUriError::Extension(ext.into()));
            }
        }
        let uri = Self {
            namespace: namespace.into(),
            model_type: model_type.into(),
            key: key.into(),
            ext: ext.map(Into::into),
        };
        if uri.to_string().len() > MAX_LEN {
            return Err(ArtifactUriError::TooLong);
        }
        Ok(uri)
    }

    pub fn parse(text: &str) -> Result<Self, ArtifactUriError> {
        if text.len() > MAX_LEN {
            return Err(ArtifactUriError::TooLong);
        }
        let caps = URI
            .captures(text)
            .ok_or_else(|| ArtifactUriError::Malformed(text.into()))?;
        Ok(Self {
            namespace: caps["ns"].to_owned(),
            model_type: caps["mt"].to_owned(),
            key: caps["key"].to_owned(),
            ext: caps.name("ext").map(|m| m.as_str().to_owned()),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn model_type(&self) -> &str {
        &self.model_type
    }
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn ext(&self) -> Option<&str> {
        self.ext.as_deref()
    }
}

impl fmt::Display for ArtifactUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}-model_{}",
            self.namespace, self.model_type, self.key
        )?;
        if let Some(ext) = &self.ext {
            write!(f, ".{ext}")?;
        }
        Ok(())
    }
}

impl FromStr for ArtifactUri {
    type Err = ArtifactUriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The URI extension for an uploaded file name: its lowercased extension when that is a
/// valid one, else none (`model.JSON` → `json`, `weights` → none, `a.tar.gz` → `gz`).
pub fn extension_of(file_name: &str) -> Option<String> {
    let (_, ext) = file_name.rsplit_once('.')?;
    let ext = ext.to_ascii_lowercase();
    EXT.is_match(&ext).then_some(ext)
}

/// Whether `model_type` can appear in an artifact URI.
pub fn is_valid_model_type(model_type: &str) -> bool {
    MODEL_TYPE_RE.is_match(model_type)
}

/// Whether `namespace` can appear in an artifact URI.
pub fn is_valid_namespace(namespace: &str) -> bool {
    NAMESPACE.is_match(namespace) && namespace.len() <= 256
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts() -> impl Strategy<Value = (String, String, String, Option<String>)> {
        (
            "[a-z0-9][a-z0-9_.-]{0,20}(/[a-z0-9][a-z0-9_.-]{0,20}){0,3}",
            "[a-z0-9][a-z0-9_]{0,30}",
            "[0-9a-f]{12,64}",
            proptest::option::of("[a-z0-9]{1,16}"),
        )
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity((ns, mt, key, ext) in parts()) {
            let uri = ArtifactUri::new(&ns, &mt, &key, ext.as_deref()).unwrap();
            let text = uri.to_string();
            let parsed = ArtifactUri::parse(&text).unwrap();
            prop_assert_eq!(&parsed, &uri);
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn parse_then_format_is_identity(text in "[a-z0-9_./-]{0,80}model_[0-9a-f]{0,20}(\\.[a-z0-9]{0,4})?") {
            if let Ok(uri) = ArtifactUri::parse(&text) {
                prop_assert_eq!(uri.to_string(), text);
            }
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,600}") {
            let _ = ArtifactUri::parse(&text);
        }

        #[test]
        fn parsed_key_matches_spec_regex((ns, mt, key, ext) in parts()) {
            // The product contract's consumer regex must find the same key.
            let text = ArtifactUri::new(&ns, &mt, &key, ext.as_deref()).unwrap().to_string();
            let spec = Regex::new(r"model_([0-9a-f]+)(?:\.[a-z0-9]+)?$").unwrap();
            prop_assert_eq!(&spec.captures(&text).unwrap()[1], key.as_str());
        }
    }

    #[test]
    fn placeholders_are_refused() {
        for bad in [
            "demo/safer-promote-placeholder.joblib",
            "demo/seasonal_naive-model_.joblib",
            "demo/seasonal_naive-model_abc.joblib",
            "demo/seasonal_naive-model_ABCDEF123456.joblib",
            "seasonal_naive-model_abcdef123456.joblib",
            "/seasonal_naive-model_abcdef123456",
            "demo/../x/m-model_abcdef123456",
            "demo/Seasonal-model_abcdef123456",
            "",
        ] {
            assert!(ArtifactUri::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn known_uri_parses() {
        let uri = ArtifactUri::parse("demo/seasonal_naive-model_0123456789ab.joblib").unwrap();
        assert_eq!(uri.namespace(), "demo");
        assert_eq!(uri.model_type(), "seasonal_naive");
        assert_eq!(uri.key(), "0123456789ab");
        assert_eq!(uri.ext(), Some("joblib"));
        assert_eq!(extension_of("model.JSON").as_deref(), Some("json"));
        assert_eq!(extension_of("weights"), None);
    }
}
