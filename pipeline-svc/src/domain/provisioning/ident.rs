//! The SQL identifiers a graph schema may use: `^[A-Za-z][A-Za-z0-9_]{0,62}$` and not a
//! reserved word. That is far narrower than what either database accepts once quoted, on
//! purpose: the same name then means the same table in SQLite and Postgres, in generated
//! DDL and in any query a person writes by hand, and no look-alike or invisible character
//! can make two names that read the same.

use super::reserved::{POSTGRES_RESERVED, SQLITE_KEYWORDS, SQL_2016_RESERVED, SYSTEM_COLUMNS};

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
        /// The hand-written check agrees with the rule's regular expression on every string.
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
