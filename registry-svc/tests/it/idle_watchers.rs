//! What idle `WatchAliases` streams cost the database: nothing per stream. The replica's
//! one listener probe is the whole safety net, so the transactions the registry's
//! database runs while nothing happens are the same with 200 watchers as with none
//! (Postgres' own count, not a time). And they still follow: one change reaches them all.

use std::time::Duration;

use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing::TestDb};
use futures::StreamExt;

use crate::support::{servable_run, set, start};

const WATCHERS: usize = 200;
const WINDOW: Duration = Duration::from_secs(8);
/// A backend that reported less than a second ago holds its counts for up to 10 s
/// (Postgres' PGSTAT_IDLE_INTERVAL): the set-up's reads are all counted after this.
const SETTLE: Duration = Duration::from_secs(12);
/// Transactions a second that idle watchers may add, whatever their number.
const PER_SECOND: i64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watchers_cost_the_database_nothing() {
    let server = start(TestDb::postgres().await).await;
    let mut c = server.client(Role::Admin).await;
    let runs = [
        servable_run(&mut c, "r1", &[]).await.run_id,
        servable_run(&mut c, "r2", &[]).await.run_id,
    ];
    c.set_alias(set("watched", &runs[0], None)).await.unwrap();
    tokio::time::sleep(SETTLE).await;
    let without = server.db.transactions_during(WINDOW).await;

    let client = server.client(Role::User).await;
    let mut streams = Vec::new();
    for i in 0..WATCHERS {
        // Half follow the alias by name, half the whole namespace.
        let aliases = if i % 2 == 0 {
            vec!["watched".to_string()]
        } else {
            Vec::new()
        };
        let mut s = client
            .clone()
            .watch_aliases(pb::WatchAliasesRequest {
                aliases,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let snap = next(&mut s).await;
        assert_eq!(snap.r#type, pb::AliasEventType::Snapshot as i32);
        streams.push(s);
    }
    tokio::time::sleep(SETTLE).await;
    let with = server.db.transactions_during(WINDOW).await;
    let allowed = without + PER_SECOND * WINDOW.as_secs() as i64;
    eprintln!("transactions in {WINDOW:?}: {without} with no watcher, {with} with {WATCHERS}");
    assert!(
        with <= allowed,
        "{WATCHERS} idle watchers cost {with} transactions in {WINDOW:?}, against {without} with none"
    );

    c.set_alias(set("watched", &runs[1], Some(1)))
        .await
        .unwrap();
    for s in &mut streams {
        let e = next(s).await;
        assert_eq!(e.r#type, pb::AliasEventType::Changed as i32);
        let alias = e.alias.unwrap();
        assert_eq!(
            (alias.run_id.as_str(), alias.revision),
            (runs[1].as_str(), 2)
        );
    }
    server.stop().await;
}

async fn next(s: &mut tonic::Streaming<pb::WatchAliasesResponse>) -> pb::WatchAliasesResponse {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("no error")
}
