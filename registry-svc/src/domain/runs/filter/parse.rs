//! The filter text to a [`Filter`]: a lexer and a recursive-descent parser of AIP-160's
//! grammar, typing each condition by its field as it goes.
//!
//! ```text
//! filter      = [ expression ]
//! expression  = sequence { "AND" sequence }
//! sequence    = factor { factor }             (juxtaposition is AND)
//! factor      = term { "OR" term }            (OR binds tighter than AND, as in AIP-160)
//! term        = [ "NOT" ] simple
//! simple      = restriction | "(" expression ")"
//! restriction = field ( "=" | "!=" | "<" | "<=" | ">" | ">=" | ":" ) value
//! ```

use std::str::FromStr;

use super::{Cmp, Field, Filter, Literal, Test, MAX_CONDITIONS, MAX_DEPTH, MAX_FILTER_BYTES};
use crate::{
    domain::{runs::RunStatus, validate},
    error::FieldViolation,
};

const FIELDS: &str =
    "a field (status, model_type, name, create_time, tags.<key>, params.<key>, metrics.<key>)";
const STATUSES: &str = "a status (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)";

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    Colon,
    Cmp(Cmp),
    /// A quoted string; `wildcard` when it ended in an unescaped `*` (not part of `text`).
    Str {
        text: String,
        wildcard: bool,
    },
    Word(String),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// 1-based character column where the token starts.
    column: usize,
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.-/+*".contains(c)
}

fn is_keyword(w: &str) -> bool {
    matches!(w, "AND" | "OR" | "NOT")
}

/// A refusal naming where it happened and what would have been accepted there.
fn expected(column: usize, what: &str, found: &str) -> FieldViolation {
    FieldViolation::new(
        "filter",
        format!("at column {column}: expected {what}, found {found}"),
    )
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Open => "`(`".into(),
        Tok::Close => "`)`".into(),
        Tok::Colon => "`:`".into(),
        Tok::Cmp(c) => format!("`{}`", c.symbol()),
        Tok::Str { .. } => "a quoted string".into(),
        Tok::Word(w) => format!("`{w:.40}`"),
        Tok::End => "the end of the filter".into(),
    }
}

fn lex(text: &str) -> Result<Vec<Token>, FieldViolation> {
    let mut out = Vec::new();
    let mut chars = text.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        let column = i + 1;
        let tok = match c {
            c if c.is_whitespace() => continue,
            '(' => Tok::Open,
            ')' => Tok::Close,
            ':' => Tok::Colon,
            '=' => Tok::Cmp(Cmp::Eq),
            '!' => match chars.next() {
                Some((_, '=')) => Tok::Cmp(Cmp::Ne),
                _ => return Err(expected(column, "`!=`", "a lone `!`")),
            },
            '<' | '>' => {
                let or_equal = chars.next_if(|&(_, c)| c == '=').is_some();
                Tok::Cmp(match (c, or_equal) {
                    ('<', false) => Cmp::Lt,
                    ('<', true) => Cmp::Le,
                    ('>', false) => Cmp::Gt,
                    _ => Cmp::Ge,
                })
            }
            '"' | '\'' => {
                let (mut s, mut wildcard, mut closed) = (String::new(), false, false);
                while let Some((_, d)) = chars.next() {
                    match d {
                        d if d == c => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some((_, e)) => s.push(e),
                            None => break,
                        },
                        '*' if chars.peek().is_some_and(|&(_, n)| n == c) => wildcard = true,
                        d => s.push(d),
                    }
                }
                if !closed {
                    return Err(expected(column, &format!("a closing {c}"), "the end"));
                }
                Tok::Str { text: s, wildcard }
            }
            c if word_char(c) => {
                let mut w = String::from(c);
                while let Some((_, d)) = chars.next_if(|&(_, d)| word_char(d)) {
                    w.push(d);
                }
                Tok::Word(w)
            }
            other => {
                return Err(expected(
                    column,
                    "a field, an operator, a value or a parenthesis",
                    &format!("{other:?}"),
                ))
            }
        };
        out.push(Token { tok, column });
    }
    let column = text.chars().count() + 1;
    out.push(Token {
        tok: Tok::End,
        column,
    });
    Ok(out)
}

/// Parses a filter; blank text is no filter. Malformed input is an invalid `filter`
/// naming the column and what was expected there.
pub fn parse(text: &str) -> Result<Option<Filter>, FieldViolation> {
    if text.len() > MAX_FILTER_BYTES {
        return Err(FieldViolation::new(
            "filter",
            format!(
                "must be at most {MAX_FILTER_BYTES} bytes, got {}",
                text.len()
            ),
        ));
    }
    let mut p = Parser {
        toks: lex(text)?,
        at: 0,
        conditions: 0,
    };
    if p.peek().tok == Tok::End {
        return Ok(None);
    }
    let filter = p.expression(0)?;
    let t = p.peek();
    if t.tok != Tok::End {
        return Err(expected(
            t.column,
            "AND, OR, a condition or the end of the filter",
            &describe(&t.tok),
        ));
    }
    Ok(Some(filter))
}

struct Parser {
    toks: Vec<Token>,
    at: usize,
    conditions: usize,
}

/// What a field word names: a field, or a whole map (`tags:K` tests a key).
enum Target {
    Field(Field),
    Map(fn(String) -> Field),
}

impl Parser {
    fn peek(&self) -> Token {
        self.toks[self.at.min(self.toks.len() - 1)].clone()
    }

    fn next(&mut self) -> Token {
        let t = self.peek();
        if t.tok != Tok::End {
            self.at += 1;
        }
        t
    }

    fn at_word(&self, w: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(x) if x == w)
    }

    fn deeper(&self, depth: usize, column: usize) -> Result<usize, FieldViolation> {
        if depth >= MAX_DEPTH {
            return Err(expected(
                column,
                &format!("at most {MAX_DEPTH} levels of parentheses and NOT"),
                "more",
            ));
        }
        Ok(depth + 1)
    }

    fn expression(&mut self, depth: usize) -> Result<Filter, FieldViolation> {
        let mut parts = vec![self.sequence(depth)?];
        while self.at_word("AND") {
            self.next();
            parts.push(self.sequence(depth)?);
        }
        Ok(combine(parts, Filter::And))
    }

    fn sequence(&mut self, depth: usize) -> Result<Filter, FieldViolation> {
        let mut parts = vec![self.factor(depth)?];
        while match &self.peek().tok {
            Tok::Open => true,
            Tok::Word(w) => w != "AND" && w != "OR",
            _ => false,
        } {
            parts.push(self.factor(depth)?);
        }
        Ok(combine(parts, Filter::And))
    }

    fn factor(&mut self, depth: usize) -> Result<Filter, FieldViolation> {
        let mut parts = vec![self.term(depth)?];
        while self.at_word("OR") {
            self.next();
            parts.push(self.term(depth)?);
        }
        Ok(combine(parts, Filter::Or))
    }

    fn term(&mut self, depth: usize) -> Result<Filter, FieldViolation> {
        if self.at_word("NOT") {
            let t = self.next();
            let depth = self.deeper(depth, t.column)?;
            return Ok(Filter::Not(Box::new(self.simple(depth)?)));
        }
        self.simple(depth)
    }

    fn simple(&mut self, depth: usize) -> Result<Filter, FieldViolation> {
        let t = self.peek();
        if t.tok != Tok::Open {
            return self.restriction();
        }
        let depth = self.deeper(depth, t.column)?;
        self.next();
        let inner = self.expression(depth)?;
        let close = self.next();
        if close.tok != Tok::Close {
            return Err(expected(
                close.column,
                "AND, OR, a condition or `)`",
                &describe(&close.tok),
            ));
        }
        Ok(inner)
    }

    fn restriction(&mut self) -> Result<Filter, FieldViolation> {
        let t = self.next();
        let target = match &t.tok {
            Tok::Word(w) if !is_keyword(w) => target(w),
            _ => None,
        }
        .ok_or_else(|| expected(t.column, FIELDS, &describe(&t.tok)))?;
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(expected(
                t.column,
                &format!("at most {MAX_CONDITIONS} conditions"),
                "more",
            ));
        }
        let op = self.next();
        let value = self.next();
        let (text, wildcard) = match &value.tok {
            Tok::Str { text, wildcard } => (text.clone(), *wildcard),
            Tok::Word(w) if !is_keyword(w) => match w.strip_suffix('*') {
                Some(p) => (p.to_string(), true),
                None => (w.clone(), false),
            },
            other => return Err(expected(value.column, "a value", &describe(other))),
        };
        if text.chars().count() > validate::MAX_VALUE_CHARS {
            return Err(expected(
                value.column,
                &format!(
                    "a value of at most {} characters",
                    validate::MAX_VALUE_CHARS
                ),
                "a longer one",
            ));
        }
        let bad_value = |what: &str| expected(value.column, what, &describe(&value.tok));
        let bad_op = |what: &str| expected(op.column, what, &describe(&op.tok));
        let is_star = wildcard && text.is_empty();
        let field = match target {
            Target::Map(make) => {
                return match op.tok {
                    Tok::Colon if !wildcard && validate::key_ok(&text) => {
                        Ok(Filter::cond(make(text), Test::Present))
                    }
                    Tok::Colon => Err(bad_value("a key of [A-Za-z0-9_.-/]")),
                    _ => Err(bad_op("`:` and a key")),
                };
            }
            Target::Field(f) => f,
        };
        let cmp = match op.tok {
            Tok::Cmp(c) => Some(c),
            Tok::Colon => None,
            _ => return Err(bad_op("an operator (=, !=, <, <=, >, >=, :)")),
        };
        let no_wildcard = |lit: Literal| {
            if wildcard {
                Err(bad_value("a value without a wildcard"))
            } else {
                Ok(lit)
            }
        };
        let test = match (&field, cmp) {
            (Field::Status, Some(c @ (Cmp::Eq | Cmp::Ne))) => {
                let name = text.strip_prefix("RUN_STATUS_").unwrap_or(&text);
                let s = RunStatus::parse(name).ok_or_else(|| bad_value(STATUSES))?;
                Test::Compare(c, no_wildcard(Literal::Status(s))?)
            }
            (Field::Status, _) => return Err(bad_op("= or != after status")),
            (Field::CreateTime, Some(c)) => {
                let micros = prost_types::Timestamp::from_str(&text)
                    .ok()
                    .and_then(|ts| {
                        ts.seconds
                            .checked_mul(1_000_000)?
                            .checked_add(i64::from(ts.nanos) / 1000)
                    })
                    .ok_or_else(|| {
                        bad_value("an RFC 3339 time in quotes, as \"2026-01-31T12:00:00Z\"")
                    })?;
                Test::Compare(c, no_wildcard(Literal::Time(micros))?)
            }
            (Field::CreateTime, None) => return Err(bad_op("a comparison after create_time")),
            (Field::Metric(_), Some(c)) => {
                let n = f64::from_str(&text)
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| bad_value("a finite number"))?;
                Test::Compare(c, no_wildcard(Literal::Number(n))?)
            }
            (Field::Metric(_), None) if is_star => Test::Present,
            (Field::Metric(_), None) => return Err(bad_value("`*` (a metric tests presence)")),
            (Field::Tag(_) | Field::Param(_), None) if is_star => Test::Present,
            (_, None) if wildcard => return Err(bad_value("a value without a wildcard")),
            (_, None) => Test::Contains(text),
            (_, Some(Cmp::Eq)) if wildcard => Test::Prefix(text),
            (_, Some(Cmp::Ne)) if wildcard => {
                return Ok(Filter::Not(Box::new(Filter::cond(
                    field,
                    Test::Prefix(text),
                ))))
            }
            (_, Some(c)) => Test::Compare(c, no_wildcard(Literal::Text(text))?),
        };
        Ok(Filter::cond(field, test))
    }
}

/// One part is itself; more are joined by `make` (AND or OR).
fn combine(mut parts: Vec<Filter>, make: fn(Vec<Filter>) -> Filter) -> Filter {
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        make(parts)
    }
}

fn target(word: &str) -> Option<Target> {
    let keyed = |prefix: &str, make: fn(String) -> Field| {
        word.strip_prefix(prefix)
            .filter(|k| validate::key_ok(k))
            .map(|k| Target::Field(make(k.to_string())))
    };
    Some(match word {
        "status" => Target::Field(Field::Status),
        "model_type" => Target::Field(Field::ModelType),
        "name" => Target::Field(Field::Name),
        "create_time" => Target::Field(Field::CreateTime),
        "tags" => Target::Map(Field::Tag),
        "params" => Target::Map(Field::Param),
        "metrics" => Target::Map(Field::Metric),
        _ => {
            return keyed("tags.", Field::Tag)
                .or_else(|| keyed("params.", Field::Param))
                .or_else(|| keyed("metrics.", Field::Metric))
        }
    })
}
