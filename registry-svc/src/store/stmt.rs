//! Statements as data — SQL text with `$n` placeholders plus typed arguments — so one
//! statement serves both backends: Postgres runs writes through its sqlx pool, SQLite hands
//! them to its writer thread ([`super::sqlite_writer`]).

use capstan_server::db::Connections;
use sqlx::{any::AnyRow, Connection, Row};

use super::sqlite_writer::SqliteWriter;
use crate::error::{Error, Result};

/// An argument or a returned column. Nulls are typed: Postgres refuses a text NULL for a
/// BIGINT column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(Option<i64>),
    Real(f64),
    Text(Option<String>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}
impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Real(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(Some(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(Some(v.to_string()))
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(Some(v.clone()))
    }
}
impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        Self::Text(v)
    }
}
impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        Self::Text(v.map(str::to_string))
    }
}

#[derive(Debug, Clone)]
pub struct Stmt {
    pub sql: String,
    pub args: Vec<Value>,
    /// Has a `RETURNING` clause: its rows are read back and counted as the rows changed.
    pub returning: bool,
}

impl Stmt {
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            args: Vec::new(),
            returning: false,
        }
    }

    pub fn returning(sql: impl Into<String>) -> Self {
        Self {
            returning: true,
            ..Self::new(sql)
        }
    }

    pub fn bind(mut self, v: impl Into<Value>) -> Self {
        self.args.push(v.into());
        self
    }

    /// Adds an argument and returns its placeholder, for SQL built piece by piece.
    pub fn arg(&mut self, v: impl Into<Value>) -> String {
        self.args.push(v.into());
        format!("${}", self.args.len())
    }

    pub fn push(&mut self, s: &str) -> &mut Self {
        self.sql.push_str(s);
        self
    }

    pub fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.sql);
        for a in &self.args {
            q = match a {
                Value::Int(i) => q.bind(*i),
                Value::Real(f) => q.bind(*f),
                Value::Text(s) => q.bind(s.as_deref()),
            };
        }
        q
    }
}

/// What a write statement did: how many rows it changed, and the first row it returned.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub affected: u64,
    pub returned: Option<Vec<Value>>,
}

impl Outcome {
    fn column(&self, i: usize) -> Result<&Value> {
        self.returned
            .as_ref()
            .and_then(|r| r.get(i))
            .ok_or_else(|| Error::Internal(format!("write returned no column {i}")))
    }

    pub fn int(&self, i: usize) -> Result<i64> {
        match self.column(i)? {
            Value::Int(Some(v)) => Ok(*v),
            other => Err(Error::Internal(format!(
                "column {i} returned {other:?}, not an integer"
            ))),
        }
    }

    pub fn text(&self, i: usize) -> Result<&str> {
        match self.column(i)? {
            Value::Text(Some(v)) => Ok(v),
            other => Err(Error::Internal(format!(
                "column {i} returned {other:?}, not text"
            ))),
        }
    }
}

/// Where writes go: the Postgres pool, or SQLite's one writer thread.
pub enum Writer {
    Pool(Connections),
    Sqlite(SqliteWriter),
}

impl Writer {
    /// Runs `stmts` in order, atomically, and returns what each did. A unique violation
    /// comes back as `ABORTED` (a concurrent writer won); the caller words it.
    pub async fn run(&self, stmts: Vec<Stmt>) -> Result<Vec<Outcome>> {
        match self {
            Self::Sqlite(w) => w.run(stmts).await,
            Self::Pool(db) if stmts.len() == 1 => Ok(vec![exec(db, &stmts[0]).await?]),
            Self::Pool(db) => {
                let mut lease = db.acquire().await.map_err(write_error)?;
                let mut tx = lease.begin().await.map_err(write_error)?;
                let mut out = Vec::with_capacity(stmts.len());
                for s in &stmts {
                    out.push(exec(&mut *tx, s).await?);
                }
                tx.commit().await.map_err(write_error)?;
                lease.release();
                Ok(out)
            }
        }
    }

    pub async fn one(&self, stmt: Stmt) -> Result<Outcome> {
        self.run(vec![stmt])
            .await?
            .pop()
            .ok_or_else(|| Error::Internal("a write returned no outcome".into()))
    }
}

async fn exec<'c, E>(e: E, s: &Stmt) -> Result<Outcome>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    if s.returning {
        let rows = s.query().fetch_all(e).await.map_err(write_error)?;
        Ok(Outcome {
            affected: rows.len() as u64,
            returned: rows.first().map(row_values).transpose()?,
        })
    } else {
        let done = s.query().execute(e).await.map_err(write_error)?;
        Ok(Outcome {
            affected: done.rows_affected(),
            returned: None,
        })
    }
}

/// The columns of a returned row; `Any` rows carry no static types, so each is tried as
/// the types writes return.
fn row_values(row: &AnyRow) -> Result<Vec<Value>> {
    (0..row.len())
        .map(|i| {
            if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                Ok(Value::Int(v))
            } else if let Ok(v) = row.try_get::<Option<String>, _>(i) {
                Ok(Value::Text(v))
            } else {
                row.try_get::<f64, _>(i).map(Value::Real).map_err(db_error)
            }
        })
        .collect()
}

pub fn write_error(e: sqlx::Error) -> Error {
    if capstan_server::db::is_unique_violation(&e) {
        Error::Aborted(format!("a concurrent write won: {e}"))
    } else {
        db_error(e)
    }
}

/// Maps a database error, logging it where it becomes a status.
pub fn db_error(e: sqlx::Error) -> Error {
    match capstan_server::db::classify(&e) {
        capstan_server::db::DbFailure::Conflict => {
            Error::Aborted(format!("a concurrent transaction won: {e}"))
        }
        capstan_server::db::DbFailure::Unavailable => {
            tracing::warn!(error = %e, "database unavailable");
            Error::Unavailable(format!("database unavailable: {e}"))
        }
        _ => {
            tracing::error!(error = %e, "database error");
            Error::Internal(format!("database error: {e}"))
        }
    }
}
