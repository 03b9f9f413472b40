//! Database failures classified on real databases: what a client is told depends on it (a
//! lost connection must read as retryable, never as our bug).

use std::time::Duration;

use capstan_server::{
    db::{classify, DbFailure},
    testing::TestDb,
};
use sqlx::Connection;

use crate::connections::open;

capstan_server::test_on_both_backends!(
    unique_violations_are_told_apart,
    other_errors_are_neither_retryable_nor_conflicts,
);

async fn unique_violations_are_told_apart(db: TestDb) {
    let conns = open(&db, 2).await;
    sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        .execute(&conns)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&conns)
        .await
        .unwrap();
    let e = sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&conns)
        .await
        .unwrap_err();
    assert_eq!(classify(&e), DbFailure::UniqueViolation, "{e}");
}

async fn other_errors_are_neither_retryable_nor_conflicts(db: TestDb) {
    let conns = open(&db, 2).await;
    let e = sqlx::query("SELECT * FROM no_such_table")
        .execute(&conns)
        .await
        .unwrap_err();
    assert_eq!(classify(&e), DbFailure::Other, "{e}");
}

/// What a Postgres restart or failover does to open connections: each is ended by the
/// server ("terminating connection due to administrator command"). The query that meets
/// such a connection is unavailable, and the pool then opens fresh ones by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_unavailable_and_replaced() {
    let db = TestDb::postgres().await;
    let conns = open(&db, 2).await;
    sqlx::query("SELECT 1").execute(&conns).await.unwrap();
    assert!(
        db.terminate_connections().await >= 1,
        "no connection was open"
    );
    let e = loop {
        // The server's goodbye may still be in flight for a moment.
        match sqlx::query("SELECT 1").execute(&conns).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => break e,
        }
    };
    assert_eq!(classify(&e), DbFailure::Unavailable, "{e:?}");
    let mut recovered = false;
    for _ in 0..50 {
        if sqlx::query("SELECT 1").execute(&conns).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the pool did not reconnect within 5 s");
}

/// Write skew between two serializable transactions: the second to commit loses with a
/// serialization failure, which is a conflict (retry the transaction), not our bug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failures_are_conflicts() {
    let db = TestDb::postgres().await;
    let conns = open(&db, 2).await;
    sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        .execute(&conns)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1, 0), (2, 0)")
        .execute(&conns)
        .await
        .unwrap();
    let (mut a, mut b) = (
        conns.acquire().await.unwrap(),
        conns.acquire().await.unwrap(),
    );
    let mut ta = a.begin().await.unwrap();
    let mut tb = b.begin().await.unwrap();
    for (tx, k) in [(&mut ta, 1), (&mut tb, 2)] {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .execute(&mut **tx)
            .await
            .unwrap();
        sqlx::query("SELECT SUM(v) FROM t")
            .execute(&mut **tx)
            .await
            .unwrap();
        sqlx::query("UPDATE t SET v = 1 WHERE k = $1")
            .bind(k)
            .execute(&mut **tx)
            .await
            .unwrap();
    }
    ta.commit().await.unwrap();
    let e = tb.commit().await.unwrap_err();
    assert_eq!(classify(&e), DbFailure::Conflict, "{e}");
}
