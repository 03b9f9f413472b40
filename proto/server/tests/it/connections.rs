//! `db::Connections` on both backends: kept connections are reused, more users than
//! connections all get served, a use that was cut short leaves nothing behind, and kept
//! connections end at the pool's max lifetime and idle timeout.

use std::time::{Duration, Instant};

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
    kept_connections_end_at_the_pools_max_lifetime,
    kept_connections_end_after_the_pools_idle_timeout,
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

/// One connection, under the given max lifetime and idle timeout.
async fn open_limited(
    db: &TestDb,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
) -> Connections {
    capstan_server::db::pool_options(db.backend(), 1, None)
        .max_lifetime(max_lifetime)
        .idle_timeout(idle_timeout)
        .connect(&db.url)
        .await
        .expect("open the test database")
        .into()
}

/// Marks the connection the next use gets (a temporary table lives on its connection
/// only); on Postgres, returns its server process.
async fn mark(db: &TestDb, conns: &Connections) -> Option<i32> {
    let mut lease = conns.acquire().await.unwrap();
    sqlx::query("CREATE TEMP TABLE marker (x INTEGER)")
        .execute(&mut *lease)
        .await
        .unwrap();
    let pid = if db.is_postgres() {
        Some(
            sqlx::query("SELECT pg_backend_pid()")
                .fetch_one(&mut *lease)
                .await
                .unwrap()
                .get(0),
        )
    } else {
        None
    };
    lease.release();
    pid
}

/// Whether the next use gets the marked connection.
async fn marked(conns: &Connections) -> bool {
    let mut lease = conns.acquire().await.unwrap();
    let found = sqlx::query("SELECT COUNT(*) FROM marker")
        .fetch_one(&mut *lease)
        .await
        .is_ok();
    lease.release();
    found
}

async fn kept_connections_end_at_the_pools_max_lifetime(db: TestDb) {
    let conns = open_limited(&db, Some(Duration::from_secs(2)), None).await;
    mark(&db, &conns).await;
    let started = Instant::now();
    // In use every 100 ms, never idle: only its age can end it.
    let mut uses = 0;
    while marked(&conns).await {
        uses += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the kept connection outlived the pool's 2 s max lifetime"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        uses >= 2,
        "the connection was kept while young (used {uses} times)"
    );
}

async fn kept_connections_end_after_the_pools_idle_timeout(db: TestDb) {
    let conns = open_limited(&db, None, Some(Duration::from_secs(1))).await;
    let pid = mark(&db, &conns).await;
    assert!(marked(&conns).await, "kept while in use");
    if let Some(pid) = pid {
        // Closed by the sweep while nobody acquires: its server process ends.
        let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alive: i64 = sqlx::query("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_one(&mut admin)
                .await
                .unwrap()
                .get(0);
            if alive == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the connection idle past the 1 s timeout is still open"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    assert!(
        !marked(&conns).await,
        "the connection idle past the timeout was not used again"
    );
}
