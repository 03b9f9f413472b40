//! Test support shared by every crate's integration tests (feature `testing`).
//!
//! Each test gets its own database: a SQLite file in a temp dir, or a fresh Postgres
//! database that is dropped afterwards. When no Postgres answers, the Postgres variant
//! says loudly that it is skipped — unless `CAPSTAN_REQUIRE_POSTGRES=1` (CI), where that
//! is a failure.

use std::{path::PathBuf, time::Duration};

use sqlx::{Connection, PgConnection};

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
    pub fn is_postgres(&self) -> bool {
        self.pg_name.is_some()
    }
}

pub fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir for the test database");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
    TestDb {
        url,
        dir,
        pg_name: None,
    }
}

fn admin_url() -> String {
    std::env::var("CAPSTAN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

fn required() -> bool {
    std::env::var("CAPSTAN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A fresh Postgres database, or `None` (announced on stderr) when none is reachable.
pub async fn postgres(test: &str) -> Option<TestDb> {
    let admin = admin_url();
    let conn = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&admin)).await;
    let mut conn = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return skip(test, &admin, &e.to_string()),
        Err(_) => return skip(test, &admin, "timed out"),
    };
    let name = format!("capstan_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE for the test");
    // The test database replaces the admin URL's database; its parameters (`sslmode`, a
    // socket `host`) stay.
    let (location, params) = admin
        .split_once('?')
        .map_or((admin.as_str(), String::new()), |(l, p)| {
            (l, format!("?{p}"))
        });
    let base = location.rsplit_once('/').map_or(location, |(b, _)| b);
    let dir = tempfile::tempdir().expect("temp dir for the test");
    Some(TestDb {
        url: format!("{base}/{name}{params}"),
        dir,
        pg_name: Some(name),
    })
}

fn skip(test: &str, url: &str, why: &str) -> Option<TestDb> {
    if required() {
        panic!(
            "CAPSTAN_REQUIRE_POSTGRES=1 but Postgres at {url} is unreachable ({why}) for {test}"
        );
    }
    eprintln!("\n*** SKIPPED (Postgres part of {test}): no server at {url}: {why}. Set CAPSTAN_TEST_POSTGRES_URL or start Postgres; CI sets CAPSTAN_REQUIRE_POSTGRES=1. ***\n");
    None
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = &self.pg_name else { return };
        // Synchronous on purpose: Drop cannot await, and FORCE ends lingering pool connections.
        let out = std::process::Command::new("psql")
            .args([
                &admin_url(),
                "-qc",
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "could not drop test database {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("could not drop test database {name}: psql: {e}"),
        }
    }
}

/// Both backends: SQLite always, Postgres when reachable.
pub async fn all_backends(test: &str) -> Vec<TestDb> {
    let mut dbs = vec![sqlite()];
    dbs.extend(postgres(test).await);
    dbs
}

/// A random HS256 secret written to a file in `dir`, for servers with auth on.
pub fn jwt_secret(dir: &std::path::Path) -> (PathBuf, Vec<u8>) {
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4().simple()).into_bytes();
    let path = dir.join("jwt.secret");
    std::fs::write(&path, &secret).expect("write the test JWT secret");
    (path, secret)
}
