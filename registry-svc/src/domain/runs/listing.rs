//! `ListRuns`: filters, order and keyset page tokens.

use std::collections::BTreeMap;

use capstan_server::paging;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    filter::{self, Cmp, Field, Filter, Literal, Test},
    ModelRun, RunStatus,
};
use crate::{
    domain::{validate, Micros},
    error::{Error, Result, Validator},
};

/// The request's equality fields (older than [`Filter`], and sugar for it): every
/// condition given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub model_type: Option<String>,
    /// Each of these tags, with exactly this value.
    pub tags: BTreeMap<String, String>,
    pub name_prefix: Option<String>,
}

impl RunFilter {
    /// The same conditions as one filter; `None` when there is none.
    pub fn as_filter(&self) -> Option<Filter> {
        Filter::all(self.conditions())
    }

    /// The same conditions as filter conditions.
    fn conditions(&self) -> Vec<Filter> {
        let text = |s: &str| Literal::Text(s.to_string());
        let mut out = Vec::new();
        if let Some(s) = self.status {
            out.push(Filter::cond(
                Field::Status,
                Test::Compare(Cmp::Eq, Literal::Status(s)),
            ));
        }
        if let Some(mt) = &self.model_type {
            out.push(Filter::cond(
                Field::ModelType,
                Test::Compare(Cmp::Eq, text(mt)),
            ));
        }
        if let Some(p) = &self.name_prefix {
            out.push(Filter::cond(Field::Name, Test::Prefix(p.clone())));
        }
        for (k, v) in &self.tags {
            out.push(Filter::cond(
                Field::Tag(k.clone()),
                Test::Compare(Cmp::Eq, text(v)),
            ));
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunOrder {
    CreateTime {
        desc: bool,
    },
    /// By one metric; runs without it are left out.
    Metric {
        name: String,
        desc: bool,
    },
}

/// Where the previous page ended: the sort key of its last run and that run's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunCursor {
    CreateTime(Micros, Uuid),
    Metric(f64, Uuid),
}

impl RunCursor {
    /// The cursor after `run` in `order`.
    fn after(run: &ModelRun, order: &RunOrder) -> Self {
        match order {
            RunOrder::CreateTime { .. } => Self::CreateTime(run.create_time, run.id),
            RunOrder::Metric { name, .. } => {
                Self::Metric(run.metrics.get(name).copied().unwrap_or_default(), run.id)
            }
        }
    }

    fn fits(&self, order: &RunOrder) -> bool {
        matches!(
            (self, order),
            (Self::CreateTime(..), RunOrder::CreateTime { .. })
                | (Self::Metric(..), RunOrder::Metric { .. })
        )
    }
}

/// A `ListRuns` request as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct ListRuns {
    /// Only runs of this namespace are listed.
    pub namespace: String,
    pub filter: RunFilter,
    /// An AIP-160 filter expression; it and `filter` must both hold.
    pub expression: String,
    pub order_by: String,
    pub page_size: i32,
    pub page_token: String,
}

/// A checked listing: what to ask the store for.
pub(super) struct RunQuery {
    pub filter: Option<Filter>,
    pub order: RunOrder,
    pub after: Option<RunCursor>,
    pub limit: usize,
    /// What page tokens are bound to: the filter and the order.
    fingerprint: String,
}

impl ListRuns {
    pub(super) fn checked(&self) -> Result<RunQuery> {
        let limit = paging::page_size(self.page_size)?;
        let order = parse_order(&self.order_by)?;
        validate_filter(&self.filter)?;
        let mut parts = self.filter.conditions();
        parts.extend(filter::parse(&self.expression)?);
        let filter = Filter::all(parts);
        // The canonical text: the same filter spelled differently keeps its tokens.
        let fingerprint = match &filter {
            Some(f) => format!("{}|{f}|{order:?}", self.namespace),
            None => format!("{}||{order:?}", self.namespace),
        };
        let after: Option<RunCursor> = paging::decode(&self.page_token, &fingerprint)?;
        if after.as_ref().is_some_and(|a| !a.fits(&order)) {
            return Err(Error::invalid("page_token", "does not match order_by"));
        }
        Ok(RunQuery {
            filter,
            order,
            after,
            limit,
            fingerprint,
        })
    }
}

impl RunQuery {
    /// Cuts the store's `limit + 1` runs to a page, and the token of the next one (empty
    /// on the last page).
    pub fn page(&self, mut runs: Vec<ModelRun>) -> (Vec<ModelRun>, String) {
        if runs.len() <= self.limit {
            return (runs, String::new());
        }
        runs.truncate(self.limit);
        let last = &runs[self.limit - 1];
        let token = paging::encode(&self.fingerprint, &RunCursor::after(last, &self.order));
        (runs, token)
    }
}

fn parse_order(order_by: &str) -> Result<RunOrder> {
    let text = order_by.trim();
    let (field, desc) = match text.rsplit_once(' ') {
        Some((f, d)) if d.eq_ignore_ascii_case("desc") => (f.trim(), true),
        Some((f, d)) if d.eq_ignore_ascii_case("asc") => (f.trim(), false),
        _ => (text, false),
    };
    match field {
        "" => Ok(RunOrder::CreateTime { desc: true }),
        "create_time" => Ok(RunOrder::CreateTime { desc }),
        f => match f.strip_prefix("metrics.") {
            Some(name) if validate::key_ok(name) => Ok(RunOrder::Metric { name: name.into(), desc }),
            _ => Err(Error::invalid(
                "order_by",
                format!("{order_by:.80?} must be `create_time` or `metrics.<name>`, optionally followed by ` desc`"),
            )),
        },
    }
}

fn validate_filter(f: &RunFilter) -> Result<()> {
    let mut v = Validator::default();
    if let Some(mt) = &f.model_type {
        v.check(
            capstan_proto::artifact_uri::is_valid_model_type(mt),
            "model_type",
            || "must match [a-z0-9][a-z0-9_]{0,63}".into(),
        );
    }
    if let Some(p) = &f.name_prefix {
        v.check(
            p.chars().count() <= validate::MAX_NAME_CHARS,
            "name_prefix",
            || "is too long".into(),
        );
    }
    validate::string_map(&mut v, "tags", &f.tags);
    Ok(v.finish()?)
}
