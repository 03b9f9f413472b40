//! The [`Registry`]: what every use case works with — the two ports, the alias watch,
//! and the in-memory helpers of the hot paths. The use cases themselves live with their
//! feature (`runs`, `aliases`, `artifacts`).

use std::{future::Future, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{
    aliases::{AliasCache, AliasWatch, CoalescedAliasReads, ServableRuns},
    ports::{BlobStore, RegistryStore},
    runs::RecentRuns,
};
use crate::error::Result;

/// How alias reads are served where several processes write (see
/// [`AliasCache`](super::aliases::AliasCache)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasReads {
    /// From the store, every time: linearizable across replicas.
    Fresh,
    /// From memory while the store announces every change.
    Cached,
}

pub struct Registry {
    pub(super) store: Arc<dyn RegistryStore>,
    pub(super) blobs: Arc<dyn BlobStore>,
    pub(super) watch: AliasWatch,
    /// Serves only while every change is known here: with a single writer, or (with
    /// `AliasReads::Cached`) while the store's change listener is connected.
    pub(super) aliases: AliasCache,
    /// Whether the cache may serve while the store's change listener is connected.
    pub(super) cache_on_notifications: bool,
    /// What the cache does not serve: concurrent reads of an alias share one store read
    /// that began after they arrived.
    pub(super) alias_reads: Arc<CoalescedAliasReads>,
    pub(super) servable: ServableRuns,
    pub(super) recent_runs: RecentRuns,
}

impl Registry {
    pub fn new(
        store: Arc<dyn RegistryStore>,
        blobs: Arc<dyn BlobStore>,
        reads: AliasReads,
    ) -> Arc<Self> {
        Arc::new(Self {
            blobs,
            watch: AliasWatch::new(),
            // Elsewhere live, when asked for, once the store's change listener is (see
            // `change_hint`).
            aliases: AliasCache::new(store.single_writer()),
            cache_on_notifications: reads == AliasReads::Cached,
            alias_reads: CoalescedAliasReads::new(store.clone()),
            servable: ServableRuns::default(),
            recent_runs: RecentRuns::default(),
            store,
        })
    }
}

impl Registry {
    /// Runs `pass` every `interval` until `shutdown` (the reaper, the purger, the
    /// collector); a failed pass is logged as `what`, and the next one tries again.
    pub(super) fn every<F, Fut>(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
        what: &'static str,
        mut pass: F,
    ) where
        F: FnMut(Arc<Self>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send,
    {
        let this = self.clone();
        capstan_server::singleton::every(interval, shutdown, what, move || pass(this.clone()));
    }
}
