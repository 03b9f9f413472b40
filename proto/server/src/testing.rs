//! Test support for every crate of the workspace (feature `testing`).
//!
//! - [`TestDb`]: a database that exists for one test: a SQLite file in a temporary
//!   directory, or a fresh Postgres database on the server at `CAPSTAN_TEST_POSTGRES_URL`
//!   (default [`DEFAULT_ADMIN_URL`]), dropped when the test ends. A Postgres that does not
//!   answer fails the test with a message that says how to start one: a test never passes
//!   without having run.
//! - [`test_on_both_backends!`](crate::test_on_both_backends): the one way to run a test
//!   on both backends, as two test functions `name::sqlite` and `name::postgres`.
//! - [`jwt_secret`]: a signing secret for servers with auth on.
//! - [`oidc::OidcProvider`]: a real OpenID Provider on loopback, for OIDC/JWKS tests.

pub mod oidc;

use std::{path::PathBuf, time::Duration};

use sqlx::{Connection, PgConnection, Row};

use crate::db::Backend;

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server test databases are made on: `CAPSTAN_TEST_POSTGRES_URL`, else the default.
pub fn admin_url() -> String {
    std::env::var("CAPSTAN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// A database that exists for one test, and a temporary directory beside it (data dir,
/// secrets, artifacts). Dropping it drops the Postgres database, ending whatever
/// connections are still open to it.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    backend: Backend,
    pg_name: Option<String>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the test database");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
        Self {
            url,
            dir,
            backend: Backend::Sqlite,
            pg_name: None,
        }
    }

    /// A fresh database on the test Postgres server. Panics, saying how to start one,
    /// when the server does not answer.
    pub async fn postgres() -> Self {
        let admin = admin_url();
        let mut conn = admin_connection(&admin).await;
        let name = format!("capstan_t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin}: {e}"));
        // The test database replaces the admin URL's database; its parameters (`sslmode`,
        // a socket `host`) stay.
        let (location, params) = admin
            .split_once('?')
            .map_or((admin.as_str(), String::new()), |(l, p)| {
                (l, format!("?{p}"))
            });
        let base = location.rsplit_once('/').map_or(location, |(b, _)| b);
        Self {
            url: format!("{base}/{name}{params}"),
            dir: tempfile::tempdir().expect("temp dir for the test"),
            backend: Backend::Postgres,
            pg_name: Some(name),
        }
    }

    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite(),
            Backend::Postgres => Self::postgres().await,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn is_postgres(&self) -> bool {
        self.backend == Backend::Postgres
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Ends every connection to this test's own Postgres database (`pg_terminate_backend`),
    /// as a database restart or failover would, and returns how many there were. Other
    /// tests' databases on the same server are left alone.
    pub async fn terminate_connections(&self) -> u64 {
        let name = self
            .pg_name
            .as_deref()
            .expect("terminate_connections needs a Postgres test database");
        let mut conn = admin_connection(&admin_url()).await;
        let ended = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .expect("pg_terminate_backend on the test database");
        ended.get::<i64, _>(0) as u64
    }

    /// Ends the sessions of this test's Postgres database that listen for notifications
    /// (their last statement was a `LISTEN`), as a network cut or failover would; how many.
    pub async fn terminate_listeners(&self) -> u64 {
        let name = self
            .pg_name
            .as_deref()
            .expect("terminate_listeners needs a Postgres test database");
        let mut conn = admin_connection(&admin_url()).await;
        let ended = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND query LIKE 'LISTEN%'",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .expect("pg_terminate_backend on the test database's listeners");
        ended.get::<i64, _>(0) as u64
    }

    /// Transactions this test's own Postgres database ran during `window`, as its
    /// statistics count them (a count, not a time). The reads go through the admin
    /// database, so they do not count themselves. A backend reports its counts at most once
    /// a second and, idle, up to 10 s late: let 10 s pass after a burst before a window.
    pub async fn transactions_during(&self, window: Duration) -> i64 {
        let name = self
            .pg_name
            .as_deref()
            .expect("transactions_during needs a Postgres test database");
        let mut conn = admin_connection(&admin_url()).await;
        async fn count(conn: &mut PgConnection, name: &str) -> i64 {
            sqlx::query(
                "SELECT (xact_commit + xact_rollback)::BIGINT FROM pg_stat_database \
                 WHERE datname = $1",
            )
            .bind(name)
            .fetch_one(conn)
            .await
            .expect("pg_stat_database of the test database")
            .get::<i64, _>(0)
        }
        let before = count(&mut conn, name).await;
        tokio::time::sleep(window).await;
        count(&mut conn, name).await - before
    }
}

async fn admin_connection(admin: &str) -> PgConnection {
    let why = match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(admin)).await
    {
        Ok(Ok(conn)) => return conn,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5 s".to_string(),
    };
    panic!(
        "this test needs PostgreSQL, and {admin} does not answer ({why}). Start it with \
         `tests/setup.sh` (the first half of the README's test command, which starts the local \
         cluster), or `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main \
         start`, or point CAPSTAN_TEST_POSTGRES_URL at a server where the user may create \
         databases."
    )
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop cannot await, and the test's runtime may be the one dropping: the database
        // goes on a thread of its own. FORCE ends connections the test left open.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin_url())
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| format!("DROP DATABASE {name}: {e}"))?;
                Ok::<_, String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop a test database: {e}"),
            Err(_) => eprintln!("could not drop a test database: the dropping thread panicked"),
        }
    }
}

/// Runs each named test function twice, as two tests in a module of its name:
/// `name::sqlite` gets a [`TestDb::sqlite`], `name::postgres` a [`TestDb::postgres`]
/// (which fails the test when Postgres is down). The functions are ordinary
/// `async fn name(db: TestDb)`, so rustfmt and the compiler see them whole. Tests run on
/// a multi-threaded runtime with 2 workers, or as many as `worker_threads = n;` says.
///
/// ```
/// use capstan_server::testing::TestDb;
///
/// capstan_server::test_on_both_backends!(opens_the_database);
///
/// async fn opens_the_database(db: TestDb) {
///     let pool = capstan_server::db::pool(&db.url, db.backend(), 2, None).await.unwrap();
///     sqlx::query("SELECT 1").execute(&pool).await.unwrap();
/// }
/// # fn main() {}
/// ```
///
/// `cargo test opens_the_database` runs both halves; `cargo test postgres` every
/// Postgres half.
#[macro_export]
macro_rules! test_on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $crate::test_on_both_backends!(worker_threads = 2; $($name),+);
    };
    (worker_threads = $n:literal; $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = $n)]
            async fn sqlite() {
                super::$name($crate::testing::TestDb::sqlite()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = $n)]
            async fn postgres() {
                super::$name($crate::testing::TestDb::postgres().await).await
            }
        }
    )+};
}

/// A random HS256 secret written to a file in `dir`, for servers with auth on.
pub fn jwt_secret(dir: &std::path::Path) -> (PathBuf, Vec<u8>) {
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4().simple()).into_bytes();
    let path = dir.join("jwt.secret");
    std::fs::write(&path, &secret).expect("write the test JWT secret");
    (path, secret)
}
