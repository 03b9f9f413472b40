//! Namespaces in SQL: one row each, written by the first run of the namespace
//! (`runs::insert`).

use super::{
    db_error,
    rows::{namespace_from_row, NAMESPACE_COLS},
    stmt::Stmt,
    SqlStore,
};
use crate::{domain::namespaces::Namespace, error::Result};

pub(super) async fn list(
    store: &SqlStore,
    only: Option<&[String]>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Namespace>> {
    let mut sql = Stmt::new(format!("SELECT {NAMESPACE_COLS} FROM namespaces"));
    let ap = sql.arg(after.unwrap_or(""));
    sql.push(&format!(" WHERE name > {ap}"));
    if let Some(names) = only {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = names.iter().map(|n| sql.arg(n.as_str())).collect();
        sql.push(&format!(" AND name IN ({})", list.join(", ")));
    }
    let lp = sql.arg(limit as i64);
    sql.push(&format!(" ORDER BY name LIMIT {lp}"));
    let rows = sql.query().fetch_all(&store.read).await.map_err(db_error)?;
    rows.iter().map(namespace_from_row).collect()
}
