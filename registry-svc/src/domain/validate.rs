//! Field rules shared by every request that carries the field.

use std::collections::BTreeMap;

use crate::error::Validator;

pub const MAX_NAME_CHARS: usize = 256;
pub const MAX_MAP_ENTRIES: usize = 64;
pub const MAX_METRICS: usize = 256;
pub const MAX_KEY_CHARS: usize = 128;
pub const MAX_VALUE_CHARS: usize = 1024;
pub const MAX_TEXT_CHARS: usize = 1024;
pub const MAX_REQUEST_ID_CHARS: usize = 128;
pub const MAX_ALIAS_CHARS: usize = 63;

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Run names: 1 to 256 printable characters.
pub fn name(v: &mut Validator, field: &str, value: &str) {
    let n = value.chars().count();
    v.check(n > 0, field, || "must not be empty".into());
    v.check(n <= MAX_NAME_CHARS, field, || {
        format!("must be at most {MAX_NAME_CHARS} characters, got {n}")
    });
    v.check(printable(value), field, || {
        "must not contain control characters".into()
    });
}

/// Map keys (params, tags, metrics): `[A-Za-z0-9_.\-/]`, 1 to 128 characters.
pub fn key_ok(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_CHARS
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
}

pub fn string_map(v: &mut Validator, field: &str, map: &BTreeMap<String, String>) {
    v.check(map.len() <= MAX_MAP_ENTRIES, field, || {
        format!(
            "must have at most {MAX_MAP_ENTRIES} entries, got {}",
            map.len()
        )
    });
    for (k, val) in map {
        v.check(key_ok(k), &format!("{field}[{k:.40}]"), || {
            "key must be 1-128 characters of [A-Za-z0-9_.-/]".into()
        });
        v.check(
            val.chars().count() <= MAX_VALUE_CHARS && printable(val),
            &format!("{field}[{k:.40}]"),
            || format!("value must be at most {MAX_VALUE_CHARS} printable characters"),
        );
    }
}

pub fn metrics(v: &mut Validator, field: &str, map: &BTreeMap<String, f64>) {
    v.check(map.len() <= MAX_METRICS, field, || {
        format!("must have at most {MAX_METRICS} entries, got {}", map.len())
    });
    for (k, val) in map {
        v.check(key_ok(k), &format!("{field}[{k:.40}]"), || {
            "key must be 1-128 characters of [A-Za-z0-9_.-/]".into()
        });
        v.check(val.is_finite(), &format!("{field}[{k:.40}]"), || {
            format!("value must be finite, got {val}")
        });
    }
}

/// Free text (descriptions, reasons, status messages): at most 1024 printable characters.
pub fn text(v: &mut Validator, field: &str, value: &str) {
    v.check(value.chars().count() <= MAX_TEXT_CHARS, field, || {
        format!("must be at most {MAX_TEXT_CHARS} characters")
    });
    v.check(
        !value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        field,
        || "must not contain control characters".into(),
    );
}

pub fn request_id(v: &mut Validator, field: &str, value: &str) {
    v.check(value.len() <= MAX_REQUEST_ID_CHARS, field, || {
        format!("must be at most {MAX_REQUEST_ID_CHARS} bytes")
    });
    v.check(value.bytes().all(|b| b.is_ascii_graphic()), field, || {
        "must be printable ASCII without spaces".into()
    });
}

/// Alias names: `[a-z0-9][a-z0-9_.-]*`, at most 63 characters (they appear in URLs and logs).
pub fn alias_ok(alias: &str) -> bool {
    let b = alias.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ALIAS_CHARS
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

/// Namespace names follow the alias rule: one segment of an artifact URI, never a path.
pub fn namespace(v: &mut Validator, field: &str, value: &str) {
    v.check(alias_ok(value), field, || {
        format!(
            "must be 1-{MAX_ALIAS_CHARS} characters of [a-z0-9_.-] starting with a letter or digit"
        )
    });
}

pub fn alias(v: &mut Validator, field: &str, value: &str) {
    v.check(alias_ok(value), field, || {
        format!(
            "must be 1-{MAX_ALIAS_CHARS} characters of [a-z0-9_.-] starting with a letter or digit"
        )
    });
}

/// A run's artifact names follow the alias rule too.
pub fn artifact_name(v: &mut Validator, field: &str, value: &str) {
    v.check(alias_ok(value), field, || {
        format!(
            "{value:.64?} must be 1-{MAX_ALIAS_CHARS} characters of [a-z0-9_.-] starting with a letter or digit"
        )
    });
}

pub const MAX_MEDIA_TYPE_CHARS: usize = 127;

/// Media types (RFC 6838): `type/subtype`, each of restricted-name characters, no parameters.
pub fn media_type(v: &mut Validator, field: &str, value: &str) {
    let token = |s: &str| {
        let b = s.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(c))
    };
    let ok = value.len() <= MAX_MEDIA_TYPE_CHARS
        && value
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s));
    v.check(ok, field, || {
        format!("{value:.64?} must be a media type `type/subtype` of at most {MAX_MEDIA_TYPE_CHARS} characters")
    });
}

pub fn uuid(v: &mut Validator, field: &str, value: &str) -> Option<uuid::Uuid> {
    match uuid::Uuid::parse_str(value) {
        Ok(id) => Some(id),
        Err(_) => {
            v.push(
                field,
                if value.is_empty() {
                    "is required".to_string()
                } else {
                    format!("{:.64?} is not a UUID", value)
                },
            );
            None
        }
    }
}

pub fn sha256_hex_ok(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
