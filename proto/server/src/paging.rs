//! AIP-158 pagination: page sizes, and opaque keyset tokens bound to the query they came
//! from.
//!
//! A token is `base64url(json(key)).check`, where `check` hashes the key together with a
//! fingerprint of the query (its filters and order). A token edited by hand, or reused
//! with other filters, is refused as an invalid `page_token` instead of yielding a wrong
//! page. Errors are [`FieldViolation`]s, which every crate's error turns into its
//! invalid-request variant.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

use crate::violations::FieldViolation;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
const MAX_TOKEN_LEN: usize = 2048;

/// `0` means the default; negative is refused; larger than the cap is clamped.
pub fn page_size(requested: i32) -> Result<usize, FieldViolation> {
    match requested {
        n if n < 0 => Err(FieldViolation::new(
            "page_size",
            format!("must not be negative, got {n}"),
        )),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

fn check(payload: &str, query: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"capstan-page-v1\0");
    h.update(query.as_bytes());
    h.update(b"\0");
    h.update(payload.as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// The token that resumes `query` after `key`.
pub fn encode<K: Serialize>(query: &str, key: &K) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).unwrap_or_default());
    let c = check(&payload, query);
    format!("{payload}.{c}")
}

/// Decodes a token of the same `query`; the empty token means "first page" (`None`).
pub fn decode<K: DeserializeOwned>(token: &str, query: &str) -> Result<Option<K>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| {
        FieldViolation::new(
            "page_token",
            format!("is not a token from this query: {why}"),
        )
    };
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad("too long"));
    }
    let (payload, c) = token.rsplit_once('.').ok_or_else(|| bad("malformed"))?;
    if check(payload, query) != c {
        return Err(bad("checksum mismatch (edited, or filters changed)"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| bad("not base64"))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| bad("unreadable"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(t in any::<i64>(), id in "[a-f0-9-]{0,36}", q in ".{0,40}") {
            let tok = encode(&q, &(t, id.clone()));
            prop_assert_eq!(decode::<(i64, String)>(&tok, &q).unwrap(), Some((t, id)));
        }

        #[test]
        fn garbage_is_an_invalid_page_token(tok in ".{1,200}") {
            match decode::<(i64, String)>(&tok, "q") {
                Ok(Some(_)) => prop_assert!(false, "forged token accepted"),
                Ok(None) => prop_assert!(false, "non-empty token read as empty"),
                Err(v) => prop_assert_eq!(v.field, "page_token"),
            }
        }
    }

    #[test]
    fn other_query_is_refused() {
        let tok = encode("status=RUNNING", &(1i64, "x"));
        assert!(decode::<(i64, String)>(&tok, "status=FAILED").is_err());
        assert_eq!(page_size(-1).unwrap_err().field, "page_size");
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(1_000_000).unwrap(), MAX_PAGE_SIZE);
    }
}
