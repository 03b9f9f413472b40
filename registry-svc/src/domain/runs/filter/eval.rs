//! The filter on one run in memory: the meaning the SQL translation must agree with.

use super::{Cmp, Condition, Field, Filter, Literal, Test};
use crate::domain::runs::ModelRun;

impl Filter {
    pub fn matches(&self, run: &ModelRun) -> bool {
        match self {
            Self::And(ps) => ps.iter().all(|p| p.matches(run)),
            Self::Or(ps) => ps.iter().any(|p| p.matches(run)),
            Self::Not(p) => !p.matches(run),
            Self::Cond(c) => c.matches(run),
        }
    }
}

enum Subject<'a> {
    Text(&'a str),
    Number(f64),
    Time(i64),
    Missing,
}

impl Condition {
    fn matches(&self, run: &ModelRun) -> bool {
        let subject = match &self.field {
            Field::Status => Subject::Text(run.status.as_str()),
            Field::ModelType => Subject::Text(&run.model_type),
            Field::Name => Subject::Text(&run.name),
            Field::CreateTime => Subject::Time(run.create_time),
            Field::Tag(k) => run
                .tags
                .get(k)
                .map_or(Subject::Missing, |v| Subject::Text(v)),
            Field::Param(k) => run
                .params
                .get(k)
                .map_or(Subject::Missing, |v| Subject::Text(v)),
            Field::Metric(k) => run
                .metrics
                .get(k)
                .map_or(Subject::Missing, |v| Subject::Number(*v)),
        };
        match (&self.test, subject) {
            (_, Subject::Missing) => false,
            (Test::Present, _) => true,
            (Test::Prefix(p), Subject::Text(s)) => s.starts_with(p.as_str()),
            (Test::Contains(p), Subject::Text(s)) => s.contains(p.as_str()),
            (Test::Compare(c, lit), subject) => compare(*c, subject, lit),
            _ => false,
        }
    }
}

fn compare(cmp: Cmp, subject: Subject<'_>, lit: &Literal) -> bool {
    let ord = match (subject, lit) {
        (Subject::Text(s), Literal::Text(l)) => s.cmp(l.as_str()),
        (Subject::Text(s), Literal::Status(l)) => s.cmp(l.as_str()),
        // SQL's order: -0 equals 0 (metrics are finite, so there is always an order).
        (Subject::Number(n), Literal::Number(l)) => match n.partial_cmp(l) {
            Some(o) => o,
            None => return false,
        },
        (Subject::Time(t), Literal::Time(l)) => t.cmp(l),
        _ => return false,
    };
    cmp.holds(ord)
}
