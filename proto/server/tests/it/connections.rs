//! `db::Connections` on both backends: kept connections are reused, more users than
//! connections all get served, and a use that was cut short leaves nothing behind.

use std::time::Duration;

use capstan_server::{db::Connections, testing::TestDb};
use sqlx::{Connection, Row};

pub async fn open(db: &TestDb, max: u32) -> Connections {
    capstan_server::db::pool(&db.url, db.backend(), max, None)
        .await
        .expect("open the test database")
        .into()
}

capstan_server::test_on_both_backends!(
    a_released_connection_serves_the_next_query,
    more_users_than_connections_are_all_served,
    a_use_cut_short_leaves_no_transaction_or_reply_behind,
);

async fn a_released_connection_serves_the_next_query(db: TestDb) {
    let conns = open(&db, 4).await;
    // A temporary table lives only on the connection that made it.
    let mut lease = conns.acquire().await.unwrap();
    sqlx::query("CREATE TEMP TABLE marker (x INTEGER)")
        .execute(&mut *lease)
        .await
        .unwrap();
    lease.release();
    for _ in 0..3 {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM marker")
            .fetch_one(&conns)
            .await
            .expect("the kept connection (with its temp table) serves the query")
            .get(0);
        assert_eq!(n, 0);
    }
}

async fn more_users_than_connections_are_all_served(db: TestDb) {
    let conns = open(&db, 2).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let conns = conns.clone();
            tokio::spawn(async move {
                for j in 0..50i64 {
                    let v: i64 = sqlx::query("SELECT $1")
                        .bind(i * 1000 + j)
                        .fetch_one(&conns)
                        .await?
                        .get(0);
                    assert_eq!(v, i * 1000 + j);
                }
                Ok::<_, sqlx::Error>(())
            })
        })
        .collect();
    // Waiters queue for a permit; were they to wait in sqlx's pool, which never sees
    // kept connections come back, they would time out (10 s) while others are served.
    let all = tokio::time::timeout(Duration::from_secs(8), futures::future::join_all(tasks))
        .await
        .expect("16 users of 2 connections finish");
    for r in all {
        r.unwrap().unwrap();
    }
}

async fn a_use_cut_short_leaves_no_transaction_or_reply_behind(db: TestDb) {
    let conns = open(&db, 1).await;
    sqlx::query("CREATE TABLE t (x INTEGER)")
        .execute(&conns)
        .await
        .unwrap();
    {
        let mut lease = conns.acquire().await.unwrap();
        let mut tx = lease.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        // Dropped without commit or release: the only connection goes back through
        // sqlx's check, which finishes the rollback.
    }
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM t")
        .fetch_one(&conns)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the abandoned transaction was rolled back");

    if db.is_postgres() {
        // A query abandoned while the server still works on it: its reply must not
        // be read as the next query's.
        let slow = sqlx::query("SELECT 7 FROM pg_sleep(0.3)").fetch_one(&conns);
        assert!(tokio::time::timeout(Duration::from_millis(50), slow)
            .await
            .is_err());
        let v: i32 = sqlx::query("SELECT 42")
            .fetch_one(&conns)
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, 42);
    }
}
