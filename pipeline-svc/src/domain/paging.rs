//! AIP-158 page tokens: the workspace's keyset-token scheme, reporting in this crate's
//! errors.

use capstan_server::paging as shared;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

pub fn page_size(requested: i32) -> Result<usize> {
    shared::page_size(requested).map_err(|v| Error::Invalid(vec![v]))
}

pub fn encode<K: Serialize>(query: &str, key: &K) -> String {
    shared::encode(query, key)
}

pub fn decode<K: DeserializeOwned>(token: &str, query: &str) -> Result<Option<K>> {
    shared::decode(token, query).map_err(|v| Error::Invalid(vec![v]))
}
