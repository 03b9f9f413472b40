//! The graphs' own databases. Embedded: one SQLite file per graph under
//! `{data_dir}/graphs/`. Server: one Postgres schema per graph (`graph_<hex>`) in the
//! pipeline's database. Statements come from `domain::provisioning::ddl` and are audited
//! again here, right before they run.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteConnection, SqliteSynchronous},
    AnyPool, Connection, Executor,
};
use uuid::Uuid;

use crate::{
    domain::provisioning::{
        ddl::{self, Dialect},
        ports::GraphDatabases,
    },
    error::{Error, Result},
};

/// Where the SQLite graph files of a data dir live.
pub fn graphs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("graphs")
}

pub enum SqlGraphDatabases {
    Sqlite { dir: PathBuf },
    Postgres { pool: AnyPool },
}

fn graph_db_error(
    what: &str,
    graph_id: Uuid,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    tracing::error!(graph = %graph_id, error = %e, "{what}");
    Error::unavailable_from(format!("{what} (graph {graph_id})"), e)
}

fn audited(statement: &str) -> Result<()> {
    ddl::audit(statement).map_err(|e| {
        tracing::error!(statement, error = %e, "generated DDL failed its audit");
        Error::internal(format!("generated DDL failed its audit: {e}"))
    })
}

/// Postgres: `duplicate_schema` — a concurrent create of the same schema won.
fn is_duplicate_schema(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "42P06")
}

impl SqlGraphDatabases {
    fn file(&self, graph_id: Uuid) -> PathBuf {
        match self {
            Self::Sqlite { dir } => dir.join(format!("{graph_id}.db")),
            Self::Postgres { .. } => PathBuf::new(),
        }
    }

    async fn open_sqlite(&self, graph_id: Uuid, create: bool) -> Result<SqliteConnection> {
        // NORMAL still syncs the database at each commit (the journal only once): the
        // durability of the pipeline's own store, without FULL's extra syncs (tens of
        // milliseconds per provisioning).
        let options = SqliteConnectOptions::new()
            .filename(self.file(graph_id))
            .create_if_missing(create)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true);
        SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| graph_db_error("cannot open the graph database", graph_id, e))
    }
}

#[async_trait]
impl GraphDatabases for SqlGraphDatabases {
    fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    fn location(&self, graph_id: Uuid) -> String {
        match self {
            Self::Sqlite { .. } => self.file(graph_id).display().to_string(),
            Self::Postgres { .. } => ddl::graph_schema_name(&graph_id),
        }
    }

    fn dialect(&self, graph_id: Uuid) -> Dialect {
        match self {
            Self::Sqlite { .. } => Dialect::Sqlite,
            Self::Postgres { .. } => Dialect::postgres_for_graph(&graph_id),
        }
    }

    async fn create(&self, graph_id: Uuid) -> Result<()> {
        match self {
            Self::Sqlite { dir } => {
                tokio::fs::create_dir_all(dir).await.map_err(|e| {
                    graph_db_error("cannot create the graphs directory", graph_id, e)
                })?;
                // Opening creates the file: an empty database until the schema is applied.
                let conn = self.open_sqlite(graph_id, true).await?;
                conn.close()
                    .await
                    .map_err(|e| graph_db_error("cannot close the graph database", graph_id, e))
            }
            Self::Postgres { pool } => {
                if self.exists(graph_id).await? {
                    return Ok(());
                }
                let Some(statement) = ddl::create_namespace(&self.dialect(graph_id)) else {
                    return Err(Error::internal("a Postgres dialect without a schema"));
                };
                audited(&statement)?;
                match pool.execute(statement.as_str()).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_duplicate_schema(&e) => Ok(()),
                    Err(e) => Err(graph_db_error(
                        "cannot create the graph's schema",
                        graph_id,
                        e,
                    )),
                }
            }
        }
    }

    async fn execute(&self, graph_id: Uuid, statements: &[String]) -> Result<()> {
        for s in statements {
            audited(s)?;
        }
        match self {
            Self::Sqlite { .. } => {
                let mut conn = self.open_sqlite(graph_id, false).await?;
                let mut tx = conn
                    .begin()
                    .await
                    .map_err(|e| graph_db_error("cannot begin DDL", graph_id, e))?;
                for s in statements {
                    tx.execute(s.as_str())
                        .await
                        .map_err(|e| graph_db_error("DDL failed", graph_id, e))?;
                }
                tx.commit()
                    .await
                    .map_err(|e| graph_db_error("cannot commit DDL", graph_id, e))?;
                conn.close()
                    .await
                    .map_err(|e| graph_db_error("cannot close the graph database", graph_id, e))
            }
            Self::Postgres { pool } => {
                let mut tx = pool
                    .begin()
                    .await
                    .map_err(|e| graph_db_error("cannot begin DDL", graph_id, e))?;
                // `DROP TABLE IF EXISTS` of a table that is not there is no news.
                (&mut *tx)
                    .execute("SET LOCAL client_min_messages TO warning")
                    .await
                    .map_err(|e| graph_db_error("cannot begin DDL", graph_id, e))?;
                for s in statements {
                    (&mut *tx)
                        .execute(s.as_str())
                        .await
                        .map_err(|e| graph_db_error("DDL failed", graph_id, e))?;
                }
                tx.commit()
                    .await
                    .map_err(|e| graph_db_error("cannot commit DDL", graph_id, e))
            }
        }
    }

    async fn remove(&self, graph_id: Uuid) -> Result<bool> {
        match self {
            Self::Sqlite { .. } => {
                let file = self.file(graph_id);
                let mut existed = false;
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut path = file.clone().into_os_string();
                    path.push(suffix);
                    match tokio::fs::remove_file(&path).await {
                        Ok(()) => existed |= suffix.is_empty(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(graph_db_error(
                                "cannot remove the graph database",
                                graph_id,
                                e,
                            ))
                        }
                    }
                }
                Ok(existed)
            }
            Self::Postgres { pool } => {
                let existed = self.exists(graph_id).await?;
                let Some(statement) = ddl::drop_namespace(&self.dialect(graph_id)) else {
                    return Err(Error::internal("a Postgres dialect without a schema"));
                };
                audited(&statement)?;
                pool.execute(statement.as_str())
                    .await
                    .map_err(|e| graph_db_error("cannot drop the graph's schema", graph_id, e))?;
                Ok(existed)
            }
        }
    }

    async fn exists(&self, graph_id: Uuid) -> Result<bool> {
        match self {
            Self::Sqlite { .. } => tokio::fs::try_exists(self.file(graph_id))
                .await
                .map_err(|e| graph_db_error("cannot look for the graph database", graph_id, e)),
            Self::Postgres { pool } => {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
                        .bind(ddl::graph_schema_name(&graph_id))
                        .fetch_one(pool)
                        .await
                        .map_err(|e| {
                            graph_db_error("cannot look for the graph's schema", graph_id, e)
                        })?;
                Ok(n > 0)
            }
        }
    }

    async fn tables(&self, graph_id: Uuid) -> Result<Vec<String>> {
        if !self.exists(graph_id).await? {
            return Ok(Vec::new());
        }
        match self {
            Self::Sqlite { .. } => {
                let mut conn = self.open_sqlite(graph_id, false).await?;
                let names = sqlx::query_scalar(
                    "SELECT name FROM sqlite_schema WHERE type = 'table' \
                     AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )
                .fetch_all(&mut conn)
                .await
                .map_err(|e| graph_db_error("cannot list the graph's tables", graph_id, e))?;
                conn.close()
                    .await
                    .map_err(|e| graph_db_error("cannot close the graph database", graph_id, e))?;
                Ok(names)
            }
            Self::Postgres { pool } => sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = $1 ORDER BY table_name",
            )
            .bind(ddl::graph_schema_name(&graph_id))
            .fetch_all(pool)
            .await
            .map_err(|e| graph_db_error("cannot list the graph's tables", graph_id, e)),
        }
    }
}
