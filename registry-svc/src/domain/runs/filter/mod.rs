//! `ListRuns` filter expressions (AIP-160): the syntax tree, its canonical text, the limits
//! that keep hostile input cheap, and [`Filter::matches`], the reference semantics the
//! store's SQL translation is tested against.
//!
//! Every comparison on a map entry (`tags.K`, `params.K`, `metrics.K`) needs the entry:
//! a run without tag `team` matches neither `tags.team = "x"` nor `tags.team != "x"`, but
//! does match `NOT tags.team = "x"`. Text compares by bytes (UTF-8 code points) on every
//! backend.

mod eval;
mod parse;

use std::fmt;

pub use parse::parse;

use super::RunStatus;
use crate::domain::Micros;

/// Longest filter text accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 8192;
/// Deepest nesting of parentheses and `NOT`.
pub const MAX_DEPTH: usize = 16;
/// Most conditions in one filter: each one becomes a subquery or a comparison.
pub const MAX_CONDITIONS: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Two or more; every one must hold.
    And(Vec<Filter>),
    /// Two or more; one must hold.
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cond(Condition),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: Field,
    pub test: Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Status,
    ModelType,
    Name,
    CreateTime,
    Tag(String),
    Param(String),
    Metric(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    Compare(Cmp, Literal),
    /// `= "abc*"`: the text starts with this.
    Prefix(String),
    /// `: "abc"`: the text contains this.
    Contains(String),
    /// `tags:K`, `tags.K:*`: the map has the key.
    Present,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Number(f64),
    Time(Micros),
    Status(RunStatus),
}

impl Filter {
    /// Every condition given must hold; `None` when there is none.
    pub fn all(mut parts: Vec<Filter>) -> Option<Filter> {
        match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Filter::And(parts)),
        }
    }

    pub fn cond(field: Field, test: Test) -> Self {
        Self::Cond(Condition { field, test })
    }
}

impl Cmp {
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }

    /// The SQL operator; `!=` is `<>` there.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Ne => "<>",
            other => other.symbol(),
        }
    }

    pub fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Self::Eq => ord == Equal,
            Self::Ne => ord != Equal,
            Self::Lt => ord == Less,
            Self::Le => ord != Greater,
            Self::Gt => ord == Greater,
            Self::Ge => ord != Less,
        }
    }
}

/// A quoted string that parses back to `s`; `wildcard` appends the unescaped `*` of a prefix.
fn quoted(f: &mut fmt::Formatter<'_>, s: &str, wildcard: bool) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '*') {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str(if wildcard { "*\"" } else { "\"" })
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status => f.write_str("status"),
            Self::ModelType => f.write_str("model_type"),
            Self::Name => f.write_str("name"),
            Self::CreateTime => f.write_str("create_time"),
            Self::Tag(k) => write!(f, "tags.{k}"),
            Self::Param(k) => write!(f, "params.{k}"),
            Self::Metric(k) => write!(f, "metrics.{k}"),
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(s) => quoted(f, s, false),
            // Rust prints the shortest text that reads back as the same f64.
            Self::Number(n) => write!(f, "{n}"),
            Self::Time(t) => {
                let ts = prost_types::Timestamp {
                    seconds: t.div_euclid(1_000_000),
                    nanos: (t.rem_euclid(1_000_000) * 1000) as i32,
                };
                write!(f, "\"{ts}\"")
            }
            Self::Status(s) => f.write_str(s.as_str()),
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.test {
            Test::Compare(cmp, lit) => write!(f, "{} {} {lit}", self.field, cmp.symbol()),
            Test::Prefix(p) => {
                write!(f, "{} = ", self.field)?;
                quoted(f, p, true)
            }
            Test::Contains(s) => {
                write!(f, "{}:", self.field)?;
                quoted(f, s, false)
            }
            Test::Present => write!(f, "{}:*", self.field),
        }
    }
}

/// The canonical text: it parses back to the same tree, and page tokens are bound to it.
/// Parentheses only where precedence needs them (OR binds tighter than AND), so the text
/// is never nested deeper than the filter it came from.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list =
            |f: &mut fmt::Formatter<'_>, ps: &[Filter], sep: &str, bare: fn(&Filter) -> bool| {
                for (i, p) in ps.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    if bare(p) {
                        write!(f, "{p}")?;
                    } else {
                        write!(f, "({p})")?;
                    }
                }
                Ok(())
            };
        match self {
            Self::And(ps) => list(f, ps, " AND ", |p| !matches!(p, Filter::And(_))),
            Self::Or(ps) => list(f, ps, " OR ", |p| {
                matches!(p, Filter::Cond(_) | Filter::Not(_))
            }),
            Self::Not(p) => match &**p {
                Filter::Cond(Condition {
                    field,
                    test: Test::Prefix(prefix),
                }) => {
                    write!(f, "{field} != ")?;
                    quoted(f, prefix, true)
                }
                Filter::Cond(c) => write!(f, "NOT {c}"),
                other => write!(f, "NOT ({other})"),
            },
            Self::Cond(c) => write!(f, "{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn text(field: Field, cmp: Cmp, s: &str) -> Filter {
        Filter::cond(field, Test::Compare(cmp, Literal::Text(s.into())))
    }

    fn error(input: &str) -> String {
        match parse(input) {
            Err(v) => {
                assert_eq!(v.field, "filter");
                v.description
            }
            Ok(f) => panic!("{input:?} parsed as {f:?}"),
        }
    }

    #[test]
    fn conditions_parse_by_field() {
        let team = || text(Field::Tag("team".into()), Cmp::Eq, "demo");
        assert_eq!(parse("  ").unwrap(), None);
        assert_eq!(parse(r#"tags.team = "demo""#).unwrap(), Some(team()));
        assert_eq!(parse("tags.team=demo").unwrap(), Some(team()));
        assert_eq!(
            parse("status = RUN_STATUS_FAILED").unwrap(),
            parse("status=\"FAILED\"").unwrap()
        );
        assert_eq!(
            parse("metrics.wape <= -1.5e-1").unwrap(),
            Some(Filter::cond(
                Field::Metric("wape".into()),
                Test::Compare(Cmp::Le, Literal::Number(-0.15))
            ))
        );
        assert_eq!(
            parse(r#"create_time >= "1970-01-01T00:00:01.5Z""#).unwrap(),
            Some(Filter::cond(
                Field::CreateTime,
                Test::Compare(Cmp::Ge, Literal::Time(1_500_000))
            ))
        );
        assert_eq!(
            parse(r#"name = "base*""#).unwrap(),
            Some(Filter::cond(Field::Name, Test::Prefix("base".into())))
        );
        assert_eq!(
            parse(r#"name = "base\*""#).unwrap(),
            Some(text(Field::Name, Cmp::Eq, "base*"))
        );
        assert_eq!(
            parse(r#"model_type:"naive""#).unwrap(),
            Some(Filter::cond(
                Field::ModelType,
                Test::Contains("naive".into())
            ))
        );
        let present = Some(Filter::cond(Field::Param("season".into()), Test::Present));
        assert_eq!(parse("params:season").unwrap(), present);
        assert_eq!(parse("params.season:*").unwrap(), present);
    }

    #[test]
    fn or_binds_tighter_than_and_and_juxtaposition_is_and() {
        let (a, b, c) = (
            text(Field::Tag("a".into()), Cmp::Eq, "1"),
            text(Field::Tag("b".into()), Cmp::Eq, "2"),
            text(Field::Tag("c".into()), Cmp::Eq, "3"),
        );
        let expected = Some(Filter::And(vec![
            a.clone(),
            Filter::Or(vec![b.clone(), c.clone()]),
        ]));
        assert_eq!(
            parse("tags.a=1 AND tags.b=2 OR tags.c=3").unwrap(),
            expected
        );
        assert_eq!(parse("tags.a=1 tags.b=2 OR tags.c=3").unwrap(), expected);
        assert_eq!(
            parse("(tags.a=1 AND tags.b=2) OR NOT tags.c=3").unwrap(),
            Some(Filter::Or(vec![
                Filter::And(vec![a, b]),
                Filter::Not(Box::new(c))
            ]))
        );
    }

    #[test]
    fn malformed_filters_name_the_column_and_what_was_expected() {
        assert_eq!(
            error("tags.team = "),
            "at column 13: expected a value, found the end of the filter"
        );
        assert!(error("colour = red").starts_with("at column 1: expected a field"));
        assert!(error("status < RUNNING").starts_with("at column 8: expected = or !="));
        assert!(error("status = DONE").starts_with("at column 10: expected a status"));
        assert!(error("metrics.wape < low").contains("a finite number"));
        assert!(error("metrics.wape < NaN").contains("a finite number"));
        assert!(error("(tags.a = 1").starts_with("at column 12: expected AND, OR"));
        assert!(error("tags.a = 1)").starts_with("at column 11: expected AND, OR"));
        assert!(error("name = \"open").contains("a closing \""));
        assert!(error("create_time > 2026").contains("RFC 3339"));
        assert!(error("tags.a < \"x*\"").contains("without a wildcard"));
    }

    #[test]
    fn hostile_filters_are_refused() {
        for sql in [
            "name = x; DROP TABLE runs",
            "1 = 1 OR status = RUNNING",
            "name = 'x' -- comment",
            "name = x) OR (1=1",
            "tags.a = 1 UNION SELECT * FROM runs",
        ] {
            error(sql);
        }
        // SQL inside a literal is only text to compare with.
        assert!(parse(r#"name = "x'; DROP TABLE runs; --""#).is_ok());
        let deep = format!("{}tags.a = 1{}", "(".repeat(17), ")".repeat(17));
        assert!(error(&deep).contains("levels of parentheses"));
        let nots = format!("{}tags.a = 1{}", "NOT (".repeat(9), ")".repeat(9));
        assert!(error(&nots).contains("levels of parentheses"));
        assert!(error("NOT NOT tags.a = 1").starts_with("at column 5: expected a field"));
        let huge = format!("name = \"{}\"", "x".repeat(1025));
        assert!(error(&huge).contains("at most 1024 characters"));
        let long = "tags.a = 1 ".repeat(1000);
        assert!(error(&long).contains("at most 8192 bytes"));
        let many = "tags.a = 1 ".repeat(65);
        assert!(error(&many).contains("at most 64 conditions"));
    }

    /// Filter-like text: tokens of the language in random order, to reach deeper than
    /// random characters do.
    fn token_soup() -> impl Strategy<Value = String> {
        let tok = prop::sample::select(vec![
            "(",
            ")",
            "AND",
            "OR",
            "NOT",
            "=",
            "!=",
            "<",
            "<=",
            ">",
            ">=",
            ":",
            "*",
            "\"a*\"",
            "'b'",
            "\"",
            "\\",
            "status",
            "RUNNING",
            "name",
            "tags.x",
            "tags",
            "metrics.m",
            "params.p",
            "create_time",
            "\"2026-01-01T00:00:00Z\"",
            "1.5",
            "-0",
            "1e999",
            "x",
        ]);
        prop::collection::vec(tok, 0..40).prop_map(|t| t.join(" "))
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_and_the_canonical_text_is_stable(
            s in prop_oneof![".{0,200}", token_soup()],
        ) {
            if let Ok(Some(f)) = parse(&s) {
                prop_assert_eq!(parse(&f.to_string()).unwrap(), Some(f));
            }
        }
    }
}
