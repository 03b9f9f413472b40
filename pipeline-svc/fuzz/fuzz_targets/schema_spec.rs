//! Any bytes as a graph schema spec: reading, validating and generating DDL never panic; a
//! refusal always names a field under `schema`; every generated statement passes the DDL
//! audit and its quoted identifiers match the identifier rule's regular expression.
#![no_main]
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pipeline_svc::domain::provisioning::{
    ddl::{self, Dialect},
    SchemaSpec,
};

static IDENTIFIER: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new("^[A-Za-z][A-Za-z0-9_]{0,62}$").unwrap());

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let valid = match SchemaSpec::from_json(text).and_then(|spec| spec.validate()) {
        Ok(valid) => valid,
        Err(violations) => {
            assert!(!violations.is_empty());
            assert!(violations.iter().all(|v| v.field.starts_with("schema")));
            return;
        }
    };
    let dialects = [
        Dialect::Sqlite,
        Dialect::postgres_for_graph(&uuid::Uuid::from_u128(u128::MAX)),
    ];
    for dialect in &dialects {
        let create = ddl::generate(&valid, dialect);
        let drop = ddl::drop_statements(&valid, dialect);
        assert_eq!(create.len(), drop.len());
        for statement in create.iter().chain(&drop) {
            if let Err(e) = ddl::audit(statement) {
                panic!("{e}: {statement}");
            }
            for quoted in statement.split('"').skip(1).step_by(2) {
                assert!(IDENTIFIER.is_match(quoted), "{quoted:?} in {statement}");
            }
        }
    }
});
