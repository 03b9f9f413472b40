//! Namespaces: where runs and aliases live, one per team say. Tokens grant read or write
//! on them (the api layer checks); a namespace comes into being with its first run and
//! records who created it.

use capstan_server::paging;

use super::{registry::Registry, Micros};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub creator: String,
    pub create_time: Micros,
}

impl Registry {
    /// A page of namespaces by name, among `readable` (`None`: every namespace).
    pub async fn list_namespaces(
        &self,
        readable: Option<&[String]>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Namespace>, String)> {
        let limit = paging::page_size(page_size)?;
        // Bound to what the caller may read: a token minted for other grants is refused.
        let query = format!("namespaces|{readable:?}");
        let after: Option<String> = paging::decode(page_token, &query)?;
        let mut namespaces = self
            .store
            .list_namespaces(readable, after.as_deref(), limit + 1)
            .await?;
        let next = if namespaces.len() > limit {
            namespaces.truncate(limit);
            paging::encode(&query, &namespaces[limit - 1].name)
        } else {
            String::new()
        };
        Ok((namespaces, next))
    }
}
