//! The SQL identifiers a graph schema may use: `^[A-Za-z][A-Za-z0-9_]{0,62}$` and not a
//! reserved word. That is far narrower than what either database accepts once quoted, on
//! purpose: the same name then means the same table in SQLite and Postgres, in generated
//! DDL and in any query a person writes by hand, and no look-alike or invisible character
//! can make two names that read the same.

/// Postgres truncates longer names (NAMEDATALEN - 1 bytes); ASCII-only makes chars = bytes.
pub const MAX_LEN: usize = 63;

/// Checks one identifier; the error says what is wrong in words a person can act on.
pub fn check(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    let len = name.chars().count();
    if len > MAX_LEN {
        return Err(format!(
            "is {len} characters long; at most {MAX_LEN} are allowed"
        ));
    }
    for (i, c) in name.chars().enumerate() {
        if i == 0 && !c.is_ascii_alphabetic() {
            return Err(format!(
                "must start with an ASCII letter, not {}",
                describe_char(c)
            ));
        }
        if !(c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "may contain only ASCII letters, digits and underscores; found {} at position {}",
                describe_char(c),
                i + 1
            ));
        }
    }
    let upper = name.to_ascii_uppercase();
    if let Some(source) = reserved_in(&upper) {
        return Err(format!(
            "\"{name}\" is a reserved word in {source}; choose another name"
        ));
    }
    if SYSTEM_COLUMNS.binary_search(&upper.as_str()).is_ok() {
        return Err(format!(
            "\"{name}\" is a system column name in PostgreSQL or SQLite; choose another name"
        ));
    }
    if upper.starts_with("SQLITE_") || upper.starts_with("PG_") {
        return Err(
            "names beginning with sqlite_ or pg_ are reserved for the databases' own objects"
                .into(),
        );
    }
    Ok(())
}

/// A table name: an identifier that also cannot collide with the index Postgres creates for
/// a primary key in the same namespace (`<table>_pkey`, or `_pkey1`… when taken).
pub fn check_table(name: &str) -> Result<(), String> {
    check(name)?;
    if name.to_ascii_lowercase().contains("_pkey") {
        return Err(
            "table names must not contain \"_pkey\": PostgreSQL names primary-key indexes that way"
                .into(),
        );
    }
    Ok(())
}

/// Which word list `upper` (already upper-cased) is on, if any.
fn reserved_in(upper: &str) -> Option<&'static str> {
    [
        (SQL_2016_RESERVED, "SQL:2016"),
        (POSTGRES_RESERVED, "PostgreSQL"),
        (SQLITE_KEYWORDS, "SQLite"),
    ]
    .into_iter()
    .find(|(list, _)| list.binary_search(&upper).is_ok())
    .map(|(_, source)| source)
}

/// A character as a person can recognise it in an error message, even when it is
/// invisible or looks like an ASCII letter (Cyrillic а, fullwidth Ａ, zero-width joiner).
pub(crate) fn describe_char(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("'{c}'")
    } else if c == ' ' {
        "a space".into()
    } else {
        format!("U+{:04X}", u32::from(c))
    }
}

/// Hidden columns that exist in every table (Postgres system columns, SQLite rowid
/// aliases): a column declared with one of these names fails or shadows them.
const SYSTEM_COLUMNS: &[&str] = &[
    "CMAX", "CMIN", "CTID", "OID", "ROWID", "TABLEOID", "XMAX", "XMIN",
];

/// SQL:2016 reserved words (ISO/IEC 9075-2:2016, as listed in the PostgreSQL manual's
/// "SQL Key Words" appendix; END-EXEC is left out as it cannot be an identifier here).
const SQL_2016_RESERVED: &[&str] = &[
    "ABS",
    "ABSENT",
    "ACOS",
    "ALL",
    "ALLOCATE",
    "ALTER",
    "AND",
    "ANY",
    "ARE",
    "ARRAY",
    "ARRAY_AGG",
    "ARRAY_MAX_CARDINALITY",
    "AS",
    "ASENSITIVE",
    "ASIN",
    "ASYMMETRIC",
    "AT",
    "ATAN",
    "ATOMIC",
    "AUTHORIZATION",
    "AVG",
    "BEGIN",
    "BEGIN_FRAME",
    "BEGIN_PARTITION",
    "BETWEEN",
    "BIGINT",
    "BINARY",
    "BLOB",
    "BOOLEAN",
    "BOTH",
    "BY",
    "CALL",
    "CALLED",
    "CARDINALITY",
    "CASCADED",
    "CASE",
    "CAST",
    "CEIL",
    "CEILING",
    "CHAR",
    "CHARACTER",
    "CHARACTER_LENGTH",
    "CHAR_LENGTH",
    "CHECK",
    "CLASSIFIER",
    "CLOB",
    "CLOSE",
    "COALESCE",
    "COLLATE",
    "COLLECT",
    "COLUMN",
    "COMMIT",
    "CONDITION",
    "CONNECT",
    "CONSTRAINT",
    "CONTAINS",
    "CONVERT",
    "COPY",
    "CORR",
    "CORRESPONDING",
    "COS",
    "COSH",
    "COUNT",
    "COVAR_POP",
    "COVAR_SAMP",
    "CREATE",
    "CROSS",
    "CUBE",
    "CUME_DIST",
    "CURRENT",
    "CURRENT_CATALOG",
    "CURRENT_DATE",
    "CURRENT_DEFAULT_TRANSFORM_GROUP",
    "CURRENT_PATH",
    "CURRENT_ROLE",
    "CURRENT_ROW",
    "CURRENT_SCHEMA",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_TRANSFORM_GROUP_FOR_TYPE",
    "CURRENT_USER",
    "CURSOR",
    "CYCLE",
    "DATE",
    "DAY",
    "DEALLOCATE",
    "DEC",
    "DECFLOAT",
    "DECIMAL",
    "DECLARE",
    "DEFAULT",
    "DEFINE",
    "DELETE",
    "DENSE_RANK",
    "DEREF",
    "DESCRIBE",
    "DETERMINISTIC",
    "DISCONNECT",
    "DISTINCT",
    "DOUBLE",
    "DROP",
    "DYNAMIC",
    "EACH",
    "ELEMENT",
    "ELSE",
    "EMPTY",
    "END",
    "END_FRAME",
    "END_PARTITION",
    "EQUALS",
    "ESCAPE",
    "EVERY",
    "EXCEPT",
    "EXEC",
    "EXECUTE",
    "EXISTS",
    "EXP",
    "EXTERNAL",
    "EXTRACT",
    "FALSE",
    "FETCH",
    "FILTER",
    "FIRST_VALUE",
    "FLOAT",
    "FLOOR",
    "FOR",
    "FOREIGN",
    "FRAME_ROW",
    "FREE",
    "FROM",
    "FULL",
    "FUNCTION",
    "FUSION",
    "GET",
    "GLOBAL",
    "GRANT",
    "GROUP",
    "GROUPING",
    "GROUPS",
    "HAVING",
    "HOLD",
    "HOUR",
    "IDENTITY",
    "IN",
    "INDICATOR",
    "INITIAL",
    "INNER",
    "INOUT",
    "INSENSITIVE",
    "INSERT",
    "INT",
    "INTEGER",
    "INTERSECT",
    "INTERSECTION",
    "INTERVAL",
    "INTO",
    "IS",
    "JOIN",
    "JSON_ARRAY",
    "JSON_ARRAYAGG",
    "JSON_EXISTS",
    "JSON_OBJECT",
    "JSON_OBJECTAGG",
    "JSON_QUERY",
    "JSON_TABLE",
    "JSON_TABLE_PRIMITIVE",
    "JSON_VALUE",
    "LAG",
    "LANGUAGE",
    "LARGE",
    "LAST_VALUE",
    "LATERAL",
    "LEAD",
    "LEADING",
    "LEFT",
    "LIKE",
    "LIKE_REGEX",
    "LISTAGG",
    "LN",
    "LOCAL",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "LOG",
    "LOG10",
    "LOWER",
    "MATCH",
    "MATCHES",
    "MATCH_NUMBER",
    "MATCH_RECOGNIZE",
    "MAX",
    "MEASURES",
    "MEMBER",
    "MERGE",
    "METHOD",
    "MIN",
    "MINUTE",
    "MOD",
    "MODIFIES",
    "MODULE",
    "MONTH",
    "MULTISET",
    "NATIONAL",
    "NATURAL",
    "NCHAR",
    "NCLOB",
    "NEW",
    "NO",
    "NONE",
    "NORMALIZE",
    "NOT",
    "NTH_VALUE",
    "NTILE",
    "NULL",
    "NULLIF",
    "NUMERIC",
    "OCCURRENCES_REGEX",
    "OCTET_LENGTH",
    "OF",
    "OFFSET",
    "OLD",
    "OMIT",
    "ON",
    "ONE",
    "ONLY",
    "OPEN",
    "OR",
    "ORDER",
    "OUT",
    "OUTER",
    "OVER",
    "OVERLAPS",
    "OVERLAY",
    "PARAMETER",
    "PARTITION",
    "PATTERN",
    "PER",
    "PERCENT",
    "PERCENTILE_CONT",
    "PERCENTILE_DISC",
    "PERCENT_RANK",
    "PERIOD",
    "PERMUTE",
    "PORTION",
    "POSITION",
    "POSITION_REGEX",
    "POWER",
    "PRECEDES",
    "PRECISION",
    "PREPARE",
    "PRIMARY",
    "PROCEDURE",
    "PTF",
    "RANGE",
    "RANK",
    "READS",
    "REAL",
    "RECURSIVE",
    "REF",
    "REFERENCES",
    "REFERENCING",
    "REGR_AVGX",
    "REGR_AVGY",
    "REGR_COUNT",
    "REGR_INTERCEPT",
    "REGR_R2",
    "REGR_SLOPE",
    "REGR_SXX",
    "REGR_SXY",
    "REGR_SYY",
    "RELEASE",
    "RESULT",
    "RETURN",
    "RETURNS",
    "REVOKE",
    "RIGHT",
    "ROLLBACK",
    "ROLLUP",
    "ROW",
    "ROWS",
    "ROW_NUMBER",
    "RUNNING",
    "SAVEPOINT",
    "SCOPE",
    "SCROLL",
    "SEARCH",
    "SECOND",
    "SEEK",
    "SELECT",
    "SENSITIVE",
    "SESSION_USER",
    "SET",
    "SHOW",
    "SIMILAR",
    "SIN",
    "SINH",
    "SKIP",
    "SMALLINT",
    "SOME",
    "SPECIFIC",
    "SPECIFICTYPE",
    "SQL",
    "SQLEXCEPTION",
    "SQLSTATE",
    "SQLWARNING",
    "SQRT",
    "START",
    "STATIC",
    "STDDEV_POP",
    "STDDEV_SAMP",
    "SUBMULTISET",
    "SUBSET",
    "SUBSTRING",
    "SUBSTRING_REGEX",
    "SUCCEEDS",
    "SUM",
    "SYMMETRIC",
    "SYSTEM",
    "SYSTEM_TIME",
    "SYSTEM_USER",
    "TABLE",
    "TABLESAMPLE",
    "TAN",
    "TANH",
    "THEN",
    "TIME",
    "TIMESTAMP",
    "TIMEZONE_HOUR",
    "TIMEZONE_MINUTE",
    "TO",
    "TRAILING",
    "TRANSLATE",
    "TRANSLATE_REGEX",
    "TRANSLATION",
    "TREAT",
    "TRIGGER",
    "TRIM",
    "TRIM_ARRAY",
    "TRUE",
    "TRUNCATE",
    "UESCAPE",
    "UNION",
    "UNIQUE",
    "UNKNOWN",
    "UNMATCHED",
    "UNNEST",
    "UPDATE",
    "UPPER",
    "USER",
    "USING",
    "VALUE",
    "VALUES",
    "VALUE_OF",
    "VARBINARY",
    "VARCHAR",
    "VARYING",
    "VAR_POP",
    "VAR_SAMP",
    "VERSIONING",
    "WHEN",
    "WHENEVER",
    "WHERE",
    "WIDTH_BUCKET",
    "WINDOW",
    "WITH",
    "WITHIN",
    "WITHOUT",
    "YEAR",
];

/// PostgreSQL reserved key words, including those that can only be function or type
/// names (`pg_get_keywords()` categories R and T, PostgreSQL 15, plus SYSTEM_USER from 16).
const POSTGRES_RESERVED: &[&str] = &[
    "ALL",
    "ANALYSE",
    "ANALYZE",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "ASC",
    "ASYMMETRIC",
    "AUTHORIZATION",
    "BINARY",
    "BOTH",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLLATION",
    "COLUMN",
    "CONCURRENTLY",
    "CONSTRAINT",
    "CREATE",
    "CROSS",
    "CURRENT_CATALOG",
    "CURRENT_DATE",
    "CURRENT_ROLE",
    "CURRENT_SCHEMA",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "DEFAULT",
    "DEFERRABLE",
    "DESC",
    "DISTINCT",
    "DO",
    "ELSE",
    "END",
    "EXCEPT",
    "FALSE",
    "FETCH",
    "FOR",
    "FOREIGN",
    "FREEZE",
    "FROM",
    "FULL",
    "GRANT",
    "GROUP",
    "HAVING",
    "ILIKE",
    "IN",
    "INITIALLY",
    "INNER",
    "INTERSECT",
    "INTO",
    "IS",
    "ISNULL",
    "JOIN",
    "LATERAL",
    "LEADING",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "NATURAL",
    "NOT",
    "NOTNULL",
    "NULL",
    "OFFSET",
    "ON",
    "ONLY",
    "OR",
    "ORDER",
    "OUTER",
    "OVERLAPS",
    "PLACING",
    "PRIMARY",
    "REFERENCES",
    "RETURNING",
    "RIGHT",
    "SELECT",
    "SESSION_USER",
    "SIMILAR",
    "SOME",
    "SYMMETRIC",
    "SYSTEM_USER",
    "TABLE",
    "TABLESAMPLE",
    "THEN",
    "TO",
    "TRAILING",
    "TRUE",
    "UNION",
    "UNIQUE",
    "USER",
    "USING",
    "VARIADIC",
    "VERBOSE",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
];

/// Every SQLite keyword (`sqlite3_keyword_name`, SQLite 3.46).
const SQLITE_KEYWORDS: &[&str] = &[
    "ABORT",
    "ACTION",
    "ADD",
    "AFTER",
    "ALL",
    "ALTER",
    "ALWAYS",
    "ANALYZE",
    "AND",
    "AS",
    "ASC",
    "ATTACH",
    "AUTOINCREMENT",
    "BEFORE",
    "BEGIN",
    "BETWEEN",
    "BY",
    "CASCADE",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "COMMIT",
    "CONFLICT",
    "CONSTRAINT",
    "CREATE",
    "CROSS",
    "CURRENT",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "DATABASE",
    "DEFAULT",
    "DEFERRABLE",
    "DEFERRED",
    "DELETE",
    "DESC",
    "DETACH",
    "DISTINCT",
    "DO",
    "DROP",
    "EACH",
    "ELSE",
    "END",
    "ESCAPE",
    "EXCEPT",
    "EXCLUDE",
    "EXCLUSIVE",
    "EXISTS",
    "EXPLAIN",
    "FAIL",
    "FILTER",
    "FIRST",
    "FOLLOWING",
    "FOR",
    "FOREIGN",
    "FROM",
    "FULL",
    "GENERATED",
    "GLOB",
    "GROUP",
    "GROUPS",
    "HAVING",
    "IF",
    "IGNORE",
    "IMMEDIATE",
    "IN",
    "INDEX",
    "INDEXED",
    "INITIALLY",
    "INNER",
    "INSERT",
    "INSTEAD",
    "INTERSECT",
    "INTO",
    "IS",
    "ISNULL",
    "JOIN",
    "KEY",
    "LAST",
    "LEFT",
    "LIKE",
    "LIMIT",
    "MATCH",
    "MATERIALIZED",
    "NATURAL",
    "NO",
    "NOT",
    "NOTHING",
    "NOTNULL",
    "NULL",
    "NULLS",
    "OF",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OTHERS",
    "OUTER",
    "OVER",
    "PARTITION",
    "PLAN",
    "PRAGMA",
    "PRECEDING",
    "PRIMARY",
    "QUERY",
    "RAISE",
    "RANGE",
    "RECURSIVE",
    "REFERENCES",
    "REGEXP",
    "REINDEX",
    "RELEASE",
    "RENAME",
    "REPLACE",
    "RESTRICT",
    "RETURNING",
    "RIGHT",
    "ROLLBACK",
    "ROW",
    "ROWS",
    "SAVEPOINT",
    "SELECT",
    "SET",
    "TABLE",
    "TEMP",
    "TEMPORARY",
    "THEN",
    "TIES",
    "TO",
    "TRANSACTION",
    "TRIGGER",
    "UNBOUNDED",
    "UNION",
    "UNIQUE",
    "UPDATE",
    "USING",
    "VACUUM",
    "VALUES",
    "VIEW",
    "VIRTUAL",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "WITHOUT",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_lists_are_sorted_upper_case_and_complete() {
        for list in [
            SQL_2016_RESERVED,
            POSTGRES_RESERVED,
            SQLITE_KEYWORDS,
            SYSTEM_COLUMNS,
        ] {
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "sorted, no duplicates"
            );
            assert!(list.iter().all(|w| w
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')));
        }
        assert_eq!(SQLITE_KEYWORDS.len(), 147);
        assert_eq!(POSTGRES_RESERVED.len(), 101);
        assert_eq!(SQL_2016_RESERVED.len(), 367);
    }

    #[test]
    fn accepts_plain_names() {
        for name in ["Person", "a", "WORKS_AT", "from_id", "x1", &"a".repeat(63)] {
            assert_eq!(check(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "must not be empty"),
            ("1abc", "must start with an ASCII letter, not '1'"),
            ("_abc", "must start with an ASCII letter, not '_'"),
            ("a b", "found a space at position 2"),
            ("a\"b", "found '\"' at position 2"),
            ("a;b", "found ';' at position 2"),
            ("a--b", "found '-' at position 2"),
            ("a/*b*/", "found '/' at position 2"),
            ("Pers\u{043e}n", "found U+043E at position 5"),
            ("\u{ff30}erson", "not U+FF30"),
            ("Per\u{200d}son", "found U+200D at position 4"),
            ("a\u{0}", "found U+0000 at position 2"),
            ("select", "reserved word in SQL:2016"),
            ("Table", "reserved word in SQL:2016"),
            ("ORDER", "reserved word in SQL:2016"),
            ("analyse", "reserved word in PostgreSQL"),
            ("pragma", "reserved word in SQLite"),
            ("xmin", "system column"),
            ("RowId", "system column"),
            ("sqlite_master", "reserved for the databases' own objects"),
            ("pg_class", "reserved for the databases' own objects"),
        ];
        for (name, why) in cases {
            let err = check(name).expect_err(name);
            assert!(err.contains(why), "{name:?}: {err}");
        }
        let long = "a".repeat(10_000);
        assert_eq!(
            check(&long),
            Err("is 10000 characters long; at most 63 are allowed".into())
        );
    }

    #[test]
    fn table_names_cannot_shadow_primary_key_indexes() {
        assert!(check_table("Person").is_ok());
        assert!(check_table("Person_pkey").is_err());
        assert!(check_table("a_PKEY1").is_err());
    }

    proptest::proptest! {
        /// The hand-written check agrees with the SPEC's regex on every string.
        #[test]
        fn agrees_with_the_spec_regex(name in "\\PC{0,3}[A-Za-z_0-9]{0,70}\\PC{0,2}") {
            let re = regex::Regex::new("^[A-Za-z][A-Za-z0-9_]{0,62}$").expect("valid regex");
            if check(&name).is_ok() {
                proptest::prop_assert!(re.is_match(&name));
            } else if re.is_match(&name) {
                let upper = name.to_ascii_uppercase();
                proptest::prop_assert!(
                    reserved_in(&upper).is_some()
                        || SYSTEM_COLUMNS.contains(&upper.as_str())
                        || upper.starts_with("SQLITE_")
                        || upper.starts_with("PG_")
                );
            }
        }
    }
}
