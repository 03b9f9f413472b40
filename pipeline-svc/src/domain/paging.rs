//! AIP-158 page tokens: registry-svc's keyset-token scheme, reporting in this crate's
//! errors.

use registry_svc::domain::paging as shared;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::Result;

pub fn page_size(requested: i32) -> Result<usize> {
    Ok(shared::page_size(requested)?)
}

pub fn encode<K: Serialize>(query: &str, key: &K) -> String {
    shared::encode(query, key)
}

pub fn decode<K: DeserializeOwned>(token: &str, query: &str) -> Result<Option<K>> {
    Ok(shared::decode(token, query)?)
}
