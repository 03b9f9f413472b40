//! Start-up on a database migrated by an earlier release: a migration whose comments were
//! reworded since is accepted (its checksum is carried forward), any other change to an
//! applied migration is still refused.

use capstan_server::{db::Backend, testing::TestDb};
use pipeline_svc::{error::Error, store::sql::SqlStore, store::sql::POSTGRES_SCHEMA};

capstan_server::test_on_both_backends!(a_database_migrated_before_a_rewording_opens);

/// SHA-384 of migration 2 as releases before its rewording applied it.
const OLD_2: &str = "77c0e85d6832a621f08eefbfbe5facc2949c131ae67cf7b11bf9c25343769394c2083fce58d8a5d5a33320dfdb1fb3b0";

async fn set_checksum(db: &TestDb, checksum: Vec<u8>) {
    let backend = Backend::of_url(&db.url).unwrap();
    let pool = capstan_server::db::pool(&db.url, backend, 1, Some(POSTGRES_SCHEMA))
        .await
        .unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 2")
        .bind(checksum)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

async fn checksum(db: &TestDb) -> Vec<u8> {
    let backend = Backend::of_url(&db.url).unwrap();
    let pool = capstan_server::db::pool(&db.url, backend, 1, Some(POSTGRES_SCHEMA))
        .await
        .unwrap();
    let c = sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    c
}

async fn a_database_migrated_before_a_rewording_opens(db: TestDb) {
    SqlStore::connect(&db.url, "r1")
        .await
        .expect("a fresh database");
    let current = checksum(&db).await;
    assert_ne!(hex::encode(&current), OLD_2);
    set_checksum(&db, hex::decode(OLD_2).unwrap()).await;
    SqlStore::connect(&db.url, "r1")
        .await
        .expect("the old text of a reworded migration is accepted");
    assert_eq!(checksum(&db).await, current, "carried forward");
    // A migration changed in any other way is refused, as sqlx always did.
    set_checksum(&db, vec![0; 48]).await;
    match SqlStore::connect(&db.url, "r1").await {
        Err(Error::Unavailable { message, .. }) => {
            assert!(message.contains("migration"), "{message}")
        }
        Err(e) => panic!("refused, but as {e}"),
        Ok(_) => panic!("a changed migration was accepted"),
    }
}
