//! A [`Filter`] as a SQL condition on the runs row `r`. Every value from the filter is a
//! bound argument; only column names and operators chosen here become SQL text.
//!
//! A map condition is a correlated `EXISTS` on its index table, checked per run through
//! the `(run_id, key)` primary key: cheap while a listing walks runs in its order. When
//! one condition matches few runs, starting from its `(key, value, run_id)` index is
//! cheaper still. Postgres's planner sees that in its statistics (it turns top-level
//! `EXISTS` into a semi-join and picks the side); SQLite's keeps only averages per index
//! prefix and cannot tell `team = t3` (a tenth of the runs) from `experiment = e42` (a
//! hundred), so on SQLite the store asks the index ([`driver`]) and names the start.

use capstan_server::db::Backend;
use sqlx::Row;

use super::{db_error, stmt::Stmt, SqlStore};
use crate::{
    domain::runs::filter::{Cmp, Condition, Field, Filter, Literal, Test},
    error::Result,
};

/// Most index entries a SQLite listing starts from; past this, walking the order wins.
const MAX_DRIVEN: i64 = 20_000;

/// The index table and key of a map condition.
pub(super) fn index(field: &Field) -> Option<(&'static str, &str)> {
    match field {
        Field::Tag(k) => Some(("run_tags", k)),
        Field::Param(k) => Some(("run_params", k)),
        Field::Metric(k) => Some(("run_metrics", k)),
        _ => None,
    }
}

/// A condition a listing starts from, and its index table.
pub(super) struct Driver<'f> {
    pub table: &'static str,
    pub condition: &'f Condition,
}

/// On SQLite, the top-level map condition to start from: the one matching the fewest
/// runs, if starting there (sorting what it finds) reads fewer rows than walking the
/// order and filtering (about `limit * runs / matches`). That crossing is near
/// `sqrt(limit * runs)` matches, so a listing reads at most that many rows either way.
pub(super) async fn driver<'f>(
    store: &SqlStore,
    filter: &'f Filter,
    limit: usize,
) -> Result<Option<Driver<'f>>> {
    let conjuncts = match filter {
        Filter::And(parts) => parts.iter().collect(),
        other => vec![other],
    };
    let candidates: Vec<Driver<'_>> = conjuncts
        .into_iter()
        .filter_map(|f| match f {
            Filter::Cond(c) => Some(Driver {
                table: index(&c.field)?.0,
                condition: c,
            }),
            _ => None,
        })
        // What the index answers by range: equality, order, presence (not `!=`, prefix
        // or substring).
        .filter(|d| {
            matches!(
                d.condition.test,
                Test::Present | Test::Compare(Cmp::Eq | Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge, _)
            )
        })
        .collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    // One round trip: the run count (rowids only grow, so the largest is an upper bound)
    // and each candidate's matches, counted up to the cap.
    let mut sql = Stmt::new("SELECT (SELECT coalesce(max(rowid), 0) FROM runs)");
    let cap = sql.arg(MAX_DRIVEN);
    for d in &candidates {
        sql.push(&format!(
            ", (SELECT count(*) FROM (SELECT 1 FROM {} d WHERE ",
            d.table
        ));
        index_match(&mut sql, d.condition, "d", Backend::Sqlite);
        sql.push(&format!(" LIMIT {cap}))"));
    }
    let row = sql.query().fetch_one(&store.read).await.map_err(db_error)?;
    let runs: i64 = row.try_get(0).map_err(db_error)?;
    let crossing = ((limit as f64) * (runs as f64)).sqrt() as i64;
    let mut best: Option<(i64, Driver<'_>)> = None;
    for (i, d) in candidates.into_iter().enumerate() {
        let n: i64 = row.try_get(i + 1).map_err(db_error)?;
        if n < crossing.min(MAX_DRIVEN) && best.as_ref().is_none_or(|(m, _)| n < *m) {
            best = Some((n, d));
        }
    }
    Ok(best.map(|(_, d)| d))
}

/// `{alias}.key = … AND …` on an index table: the entries a map condition matches.
pub(super) fn index_match(sql: &mut Stmt, c: &Condition, alias: &str, backend: Backend) {
    let key = index(&c.field).map_or("", |(_, k)| k);
    let k = sql.arg(key);
    sql.push(&format!("{alias}.key = {k}"));
    if c.test != Test::Present {
        sql.push(" AND ");
        test(sql, &format!("{alias}.value"), &c.test, backend);
    }
}

pub(super) fn push(sql: &mut Stmt, filter: &Filter, backend: Backend) {
    match filter {
        Filter::And(parts) | Filter::Or(parts) => {
            let sep = if matches!(filter, Filter::And(_)) {
                " AND "
            } else {
                " OR "
            };
            sql.push("(");
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    sql.push(sep);
                }
                push(sql, p, backend);
            }
            sql.push(")");
        }
        Filter::Not(p) => {
            sql.push("NOT (");
            push(sql, p, backend);
            sql.push(")");
        }
        Filter::Cond(c) => condition(sql, c, backend),
    }
}

fn condition(sql: &mut Stmt, c: &Condition, backend: Backend) {
    let column = match &c.field {
        Field::Status => "r.status",
        Field::ModelType => "r.model_type",
        Field::Name => "r.name",
        Field::CreateTime => "r.create_time",
        Field::Tag(_) | Field::Param(_) | Field::Metric(_) => {
            let table = index(&c.field).map_or("", |(t, _)| t);
            sql.push(&format!(
                "EXISTS (SELECT 1 FROM {table} x WHERE x.run_id = r.run_id AND "
            ));
            index_match(sql, c, "x", backend);
            sql.push(")");
            return;
        }
    };
    test(sql, column, &c.test, backend)
}

fn test(sql: &mut Stmt, column: &str, t: &Test, backend: Backend) {
    let text = match t {
        // Scalar fields are always there.
        Test::Present => "1 = 1".to_string(),
        // substr rather than LIKE: SQLite's LIKE ignores case, Postgres's does not.
        Test::Prefix(p) => {
            let a = sql.arg(p.as_str());
            format!("substr({column}, 1, length({a})) = {a}")
        }
        Test::Contains(p) => {
            let a = sql.arg(p.as_str());
            match backend {
                Backend::Sqlite => format!("instr({column}, {a}) > 0"),
                Backend::Postgres => format!("strpos({column}, {a}) > 0"),
            }
        }
        Test::Compare(cmp, lit) => {
            let a = match lit {
                Literal::Text(s) => sql.arg(s.as_str()),
                Literal::Number(n) => sql.arg(*n),
                Literal::Time(t) => sql.arg(*t),
                Literal::Status(s) => sql.arg(s.as_str()),
            };
            // Byte order, as SQLite's default and the filter's meaning; Postgres would
            // order by the database's locale.
            let ordered_text = matches!(lit, Literal::Text(_)) && !matches!(cmp, Cmp::Eq | Cmp::Ne);
            let collate = if ordered_text && backend == Backend::Postgres {
                " COLLATE \"C\""
            } else {
                ""
            };
            format!("{column}{collate} {} {a}", cmp.sql())
        }
    };
    sql.push(&text);
}
