//! Several replicas starting at once on one database all come up: migrations are applied
//! exactly once and nobody fails on a half-applied schema.

use std::sync::Arc;

use capstan_server::testing::TestDb;
use registry_svc::{domain::ports::RegistryStore, store::sql::SqlStore};

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    replicas_starting_together_share_one_schema,
);

async fn replicas_starting_together_share_one_schema(db: TestDb) {
    {
        let url = Arc::new(db.url.clone());
        let starts = (0..6).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { SqlStore::connect(&url).await })
        });
        for (i, s) in futures::future::join_all(starts)
            .await
            .into_iter()
            .enumerate()
        {
            let store = s
                .unwrap()
                .unwrap_or_else(|e| panic!("replica {i} failed to start on {}: {e}", db.url));
            store.ping().await.unwrap();
            assert!(store
                .list_aliases("default", None, 10)
                .await
                .unwrap()
                .is_empty());
        }
    }
}
