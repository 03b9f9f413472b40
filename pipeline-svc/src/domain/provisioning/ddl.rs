//! DDL for a validated schema, built from its structure (never from SQL text a client sent).
//! Every identifier is double-quoted and has passed `ident::check`; `audit` proves it of
//! any statement and is cheap enough to run before executing one.
//!
//! Property types map to columns as follows:
//!
//! | property    | PostgreSQL         | SQLite (STRICT table)                         |
//! |-------------|--------------------|-----------------------------------------------|
//! | `string`    | `TEXT`             | `TEXT`                                        |
//! | `int64`     | `BIGINT`           | `INTEGER` (64-bit)                            |
//! | `float64`   | `DOUBLE PRECISION` | `REAL` (IEEE double)                          |
//! | `bool`      | `BOOLEAN`          | `INTEGER`, `CHECK (… IN (0, 1))`              |
//! | `timestamp` | `TIMESTAMPTZ`      | `TEXT`, RFC 3339 in UTC (sorts as it reads)   |
//! | `date`      | `DATE`             | `TEXT`, `YYYY-MM-DD`                          |
//! | `json`      | `JSONB`            | `TEXT`, `CHECK (json_valid(…))`               |
//!
//! SQLite tables are STRICT, so a declared type is enforced rather than a hint, and WITHOUT
//! ROWID, so a key is a key as in Postgres: otherwise an `int64` key would alias the rowid and
//! SQLite would turn an inserted NULL into a fresh number. Apply the statements
//! of `generate` in one transaction (both databases have transactional DDL): a schema is
//! then created entirely or not at all.

use uuid::Uuid;

use super::ident;
use super::spec::{PropertyType, TableDef, ValidSchema};

/// Where a graph's tables live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    /// One database file per graph: tables are unqualified.
    Sqlite,
    /// One schema per graph in a shared database: tables are qualified with `schema`, which
    /// should come from `graph_schema_name` (see `Dialect::postgres_for_graph`).
    Postgres { schema: String },
}

impl Dialect {
    pub fn postgres_for_graph(graph_id: &Uuid) -> Self {
        Dialect::Postgres {
            schema: graph_schema_name(graph_id),
        }
    }
}

/// The Postgres schema of a graph: `graph_` and 32 hex digits, always a valid identifier.
pub fn graph_schema_name(graph_id: &Uuid) -> String {
    format!("graph_{}", graph_id.simple())
}

/// `CREATE TABLE` statements in dependency order (node tables before the relationship
/// tables that reference them).
pub fn generate(schema: &ValidSchema, dialect: &Dialect) -> Vec<String> {
    schema
        .tables()
        .iter()
        .map(|table| create_table(table, dialect))
        .collect()
}

/// `DROP TABLE IF EXISTS` in reverse dependency order: safe to run after a partial
/// `generate` (compensation) and again after a crash (idempotent). No CASCADE: nothing but
/// our own tables is ever dropped.
pub fn drop_statements(schema: &ValidSchema, dialect: &Dialect) -> Vec<String> {
    schema
        .tables()
        .iter()
        .rev()
        .map(|table| format!("DROP TABLE IF EXISTS {}", qualified(&table.name, dialect)))
        .collect()
}

/// The statement creating the graph's Postgres schema; SQLite needs none (the caller
/// creates the file).
pub fn create_namespace(dialect: &Dialect) -> Option<String> {
    match dialect {
        Dialect::Sqlite => None,
        Dialect::Postgres { schema } => Some(format!("CREATE SCHEMA {}", quote(schema))),
    }
}

/// The statement removing the graph's Postgres schema and everything in it (the schema
/// belongs to the graph alone), idempotently; SQLite needs none (the caller removes the file).
pub fn drop_namespace(dialect: &Dialect) -> Option<String> {
    match dialect {
        Dialect::Sqlite => None,
        Dialect::Postgres { schema } => {
            Some(format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(schema)))
        }
    }
}

/// The column type a property gets (see the table in the module docs).
pub fn column_type(ty: PropertyType, dialect: &Dialect) -> &'static str {
    match (dialect, ty) {
        (Dialect::Postgres { .. }, PropertyType::String) => "TEXT",
        (Dialect::Postgres { .. }, PropertyType::Int64) => "BIGINT",
        (Dialect::Postgres { .. }, PropertyType::Float64) => "DOUBLE PRECISION",
        (Dialect::Postgres { .. }, PropertyType::Bool) => "BOOLEAN",
        (Dialect::Postgres { .. }, PropertyType::Timestamp) => "TIMESTAMPTZ",
        (Dialect::Postgres { .. }, PropertyType::Date) => "DATE",
        (Dialect::Postgres { .. }, PropertyType::Json) => "JSONB",
        (Dialect::Sqlite, PropertyType::Int64 | PropertyType::Bool) => "INTEGER",
        (Dialect::Sqlite, PropertyType::Float64) => "REAL",
        (
            Dialect::Sqlite,
            PropertyType::String
            | PropertyType::Timestamp
            | PropertyType::Date
            | PropertyType::Json,
        ) => "TEXT",
    }
}

fn create_table(table: &TableDef, dialect: &Dialect) -> String {
    let mut parts: Vec<String> = table
        .columns
        .iter()
        .map(|(name, ty, not_null)| column(name, *ty, *not_null, dialect))
        .collect();
    parts.push(format!("PRIMARY KEY ({})", quoted_list(&table.primary_key)));
    for (column, ref_table, ref_column) in &table.foreign_keys {
        parts.push(format!(
            "FOREIGN KEY ({}) REFERENCES {} ({})",
            quote(column),
            qualified(ref_table, dialect),
            quote(ref_column)
        ));
    }
    let options = match dialect {
        Dialect::Sqlite => " STRICT, WITHOUT ROWID",
        Dialect::Postgres { .. } => "",
    };
    format!(
        "CREATE TABLE {} ({}){options}",
        qualified(&table.name, dialect),
        parts.join(", ")
    )
}

fn column(name: &str, ty: PropertyType, not_null: bool, dialect: &Dialect) -> String {
    let mut out = format!("{} {}", quote(name), column_type(ty, dialect));
    if not_null {
        out.push_str(" NOT NULL");
    }
    if let Dialect::Sqlite = dialect {
        match ty {
            PropertyType::Bool => out.push_str(&format!(" CHECK ({} IN (0, 1))", quote(name))),
            PropertyType::Json => out.push_str(&format!(" CHECK (json_valid({}))", quote(name))),
            _ => {}
        }
    }
    out
}

fn qualified(table: &str, dialect: &Dialect) -> String {
    match dialect {
        Dialect::Sqlite => quote(table),
        Dialect::Postgres { schema } => format!("{}.{}", quote(schema), quote(table)),
    }
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| quote(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every name reaching here is already a checked identifier; doubling quotes anyway means
/// even a hand-built `Dialect::Postgres` with a hostile schema name stays one identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The only bare words generated DDL contains. Anything else outside quotes would be an
/// unquoted identifier (or worse).
const DDL_WORDS: &[&str] = &[
    "BIGINT",
    "BOOLEAN",
    "CASCADE",
    "CHECK",
    "CREATE",
    "DATE",
    "DOUBLE",
    "DROP",
    "EXISTS",
    "FOREIGN",
    "IF",
    "IN",
    "INTEGER",
    "JSONB",
    "KEY",
    "NOT",
    "NULL",
    "PRECISION",
    "PRIMARY",
    "REAL",
    "REFERENCES",
    "ROWID",
    "SCHEMA",
    "STRICT",
    "TABLE",
    "TEXT",
    "TIMESTAMPTZ",
    "WITHOUT",
    "json_valid",
];

/// Checks a statement of this module's making: every quoted identifier passes
/// `ident::check`, and outside quotes there are only DDL key words, `( ) , .` and the
/// literals 0 and 1. No `;`, no comment, no string literal, no unquoted identifier.
pub fn audit(statement: &str) -> Result<(), String> {
    let mut chars = statement.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            '"' => {
                let end = statement[start + 1..]
                    .find('"')
                    .map(|i| start + 1 + i)
                    .ok_or_else(|| "unterminated quoted identifier".to_string())?;
                let name = &statement[start + 1..end];
                ident::check(name).map_err(|e| format!("identifier \"{name}\" {e}"))?;
                while chars.next_if(|&(i, _)| i <= end).is_some() {}
                if chars.peek().is_some_and(|&(_, c)| c == '"') {
                    return Err("escaped quote inside an identifier".into());
                }
            }
            '(' | ')' | ',' | '.' | ' ' | '0' | '1' => {}
            c if c.is_ascii_alphabetic() => {
                let mut end = start + c.len_utf8();
                while let Some((i, _)) =
                    chars.next_if(|&(_, c)| c.is_ascii_alphanumeric() || c == '_')
                {
                    end = i + 1;
                }
                let word = &statement[start..end];
                if !DDL_WORDS.contains(&word) {
                    return Err(format!("unexpected bare word {word:?}"));
                }
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::SchemaSpec;
    use super::*;

    fn social() -> ValidSchema {
        SchemaSpec::Extensions {
            extensions: vec!["social".into()],
        }
        .validate()
        .expect("valid")
    }

    #[test]
    fn sqlite_statements() {
        let ddl = generate(&social(), &Dialect::Sqlite);
        assert_eq!(ddl.len(), 4);
        assert_eq!(
            ddl[0],
            "CREATE TABLE \"Person\" (\"id\" TEXT NOT NULL, \"name\" TEXT NOT NULL, \"email\" TEXT, \
             \"born_on\" TEXT, \"created_at\" TEXT, PRIMARY KEY (\"id\")) STRICT, WITHOUT ROWID"
        );
        assert_eq!(
            ddl[2],
            "CREATE TABLE \"FOLLOWS\" (\"from_id\" TEXT NOT NULL, \"to_id\" TEXT NOT NULL, \
             \"since\" TEXT, PRIMARY KEY (\"from_id\", \"to_id\"), \
             FOREIGN KEY (\"from_id\") REFERENCES \"Person\" (\"id\"), \
             FOREIGN KEY (\"to_id\") REFERENCES \"Person\" (\"id\")) STRICT, WITHOUT ROWID"
        );
        assert_eq!(
            drop_statements(&social(), &Dialect::Sqlite),
            [
                "DROP TABLE IF EXISTS \"WORKS_AT\"",
                "DROP TABLE IF EXISTS \"FOLLOWS\"",
                "DROP TABLE IF EXISTS \"Organization\"",
                "DROP TABLE IF EXISTS \"Person\"",
            ]
        );
        assert_eq!(create_namespace(&Dialect::Sqlite), None);
    }

    #[test]
    fn postgres_statements_are_schema_qualified() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(
            graph_schema_name(&id),
            "graph_0123456789abcdef0123456789abcdef"
        );
        let dialect = Dialect::postgres_for_graph(&id);
        let ddl = generate(&social(), &dialect);
        assert_eq!(
            ddl[3],
            "CREATE TABLE \"graph_0123456789abcdef0123456789abcdef\".\"WORKS_AT\" (\
             \"from_id\" TEXT NOT NULL, \"to_id\" TEXT NOT NULL, \"title\" TEXT, \
             \"started_on\" DATE, \"ended_on\" DATE, PRIMARY KEY (\"from_id\", \"to_id\"), \
             FOREIGN KEY (\"from_id\") REFERENCES \"graph_0123456789abcdef0123456789abcdef\".\"Person\" (\"id\"), \
             FOREIGN KEY (\"to_id\") REFERENCES \"graph_0123456789abcdef0123456789abcdef\".\"Organization\" (\"id\"))"
        );
        assert_eq!(
            create_namespace(&dialect).as_deref(),
            Some("CREATE SCHEMA \"graph_0123456789abcdef0123456789abcdef\"")
        );
        assert_eq!(
            drop_namespace(&dialect).as_deref(),
            Some("DROP SCHEMA IF EXISTS \"graph_0123456789abcdef0123456789abcdef\" CASCADE")
        );
    }

    #[test]
    fn every_generated_statement_passes_the_audit() {
        for (name, _) in super::super::extensions::catalog() {
            let valid = SchemaSpec::Extensions {
                extensions: vec![name.into()],
            }
            .validate()
            .expect("valid");
            for dialect in [
                Dialect::Sqlite,
                Dialect::postgres_for_graph(&Uuid::new_v4()),
            ] {
                let all = generate(&valid, &dialect)
                    .into_iter()
                    .chain(drop_statements(&valid, &dialect))
                    .chain(create_namespace(&dialect))
                    .chain(drop_namespace(&dialect));
                for statement in all {
                    assert_eq!(audit(&statement), Ok(()), "{statement}");
                }
            }
        }
    }

    #[test]
    fn a_hostile_schema_name_stays_one_identifier_and_fails_the_audit() {
        let dialect = Dialect::Postgres {
            schema: "x\"; DROP SCHEMA public; --".into(),
        };
        let statement = create_namespace(&dialect).expect("postgres");
        assert_eq!(statement, "CREATE SCHEMA \"x\"\"; DROP SCHEMA public; --\"");
        assert!(audit(&statement).is_err());
    }

    #[test]
    fn audit_refuses_what_generate_never_emits() {
        for bad in [
            "CREATE TABLE x (\"a\" TEXT)",
            "CREATE TABLE \"a\" (\"b\" TEXT); DROP TABLE \"a\"",
            "CREATE TABLE \"a\" (\"b\" TEXT) -- x",
            "CREATE TABLE \"a\" (\"b\" TEXT /* x */)",
            "CREATE TABLE \"a\" (\"b\" TEXT DEFAULT 'x')",
            "CREATE TABLE \"select\" (\"b\" TEXT)",
            "CREATE TABLE \"a\"\"b\" (\"b\" TEXT)",
            "CREATE TABLE \"a",
            "CREATE TABLE \"Persоn\" (\"b\" TEXT)",
            "CREATE TABLE \"a\" (\"b\" TEXT NOT NULL 2)",
        ] {
            assert!(audit(bad).is_err(), "{bad}");
        }
    }
}
