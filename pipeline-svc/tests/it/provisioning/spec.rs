//! Graph schema specs against hostile input and real databases: a refused spec names the
//! field at fault and yields no DDL; a valid one creates exactly the declared tables in a
//! SQLite file and in a fresh Postgres schema, and its drop statements remove them again.

use std::collections::{BTreeMap, BTreeSet};

use capstan_server::testing::TestDb;
use pipeline_svc::domain::provisioning::{
    ddl::{self, Dialect},
    extensions, ident, CustomSchema, NodeType, Property, PropertyType, RelationshipType,
    SchemaSpec, ValidSchema, Violation,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row, SqliteConnection};
use uuid::Uuid;

/// The identifier rule (`^[A-Za-z][A-Za-z0-9_]{0,62}$`), compiled independently of the code
/// under test.
fn identifier_regex() -> regex::Regex {
    regex::Regex::new("^[A-Za-z][A-Za-z0-9_]{0,62}$").expect("valid regex")
}

fn base() -> Value {
    json!({
        "schema_type": "custom",
        "name": "crm",
        "version": "1.2.0",
        "nodes": [
            {"name": "Person", "primary_key": "id", "properties": [
                {"name": "id", "type": "string"},
                {"name": "name", "type": "string", "required": true}
            ]},
            {"name": "Company", "primary_key": "id", "properties": [
                {"name": "id", "type": "int64"}
            ]}
        ],
        "relationships": [
            {"name": "WORKS_AT", "from": "Person", "to": "Company", "properties": [
                {"name": "since", "type": "date"}
            ]}
        ]
    })
}

/// Sets (or adds) the value at a JSON pointer.
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(key.to_string(), value);
        }
        Some(Value::Array(items)) => {
            let i: usize = key.parse().expect("an array index");
            items[i] = value;
        }
        other => panic!("{pointer}: no container at {parent}: {other:?}"),
    }
}

/// The violations for a spec, read and validated as the service would. Accepting it fails
/// the test, showing the DDL that would have run.
fn refusal(text: &str) -> Vec<Violation> {
    match SchemaSpec::from_json(text).and_then(|spec| spec.validate()) {
        Err(violations) => violations,
        Ok(valid) => panic!(
            "accepted; it would run {:?}",
            ddl::generate(&valid, &Dialect::Sqlite)
        ),
    }
}

#[test]
fn the_base_spec_is_valid() {
    let valid = SchemaSpec::from_json(&base().to_string())
        .and_then(|spec| spec.validate())
        .expect("valid");
    assert_eq!(valid.tables().len(), 3);
    assert_eq!((valid.name(), valid.version()), ("crm", "1.2.0"));
    assert_eq!(valid.schema_type(), "custom");
}

#[test]
fn hostile_specs_are_refused_with_the_field_at_fault() {
    let long = "n".repeat(10_000);
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        // Quotes, statement separators and comment markers.
        ("/nodes/0/name", json!("Person\"; DROP TABLE x; --"), "schema.nodes[0].name", "found '\"' at position 7"),
        ("/nodes/1/name", json!("Company;"), "schema.nodes[1].name", "found ';'"),
        ("/nodes/0/properties/1/name", json!("name--"), "schema.nodes[0].properties[1].name", "found '-'"),
        ("/relationships/0/name", json!("WORKS/*x*/AT"), "schema.relationships[0].name", "found '/'"),
        ("/nodes/0/properties/1/name", json!("a'b"), "schema.nodes[0].properties[1].name", "position 2"),
        ("/nodes/0/properties/1/name", json!("a\\b"), "schema.nodes[0].properties[1].name", "found '\\'"),
        ("/nodes/0/properties/1/name", json!("first name"), "schema.nodes[0].properties[1].name", "found a space"),
        ("/nodes/0/properties/1/name", json!("a\nb"), "schema.nodes[0].properties[1].name", "U+000A"),
        // Reserved words, any case.
        ("/nodes/0/name", json!("select"), "schema.nodes[0].name", "reserved word"),
        ("/nodes/1/name", json!("Table"), "schema.nodes[1].name", "reserved word"),
        ("/nodes/0/properties/1/name", json!("order"), "schema.nodes[0].properties[1].name", "reserved word"),
        ("/relationships/0/properties/0/name", json!("User"), "schema.relationships[0].properties[0].name", "reserved word"),
        ("/relationships/0/name", json!("PRAGMA"), "schema.relationships[0].name", "reserved word in SQLite"),
        ("/nodes/0/properties/1/name", json!("xmin"), "schema.nodes[0].properties[1].name", "system column"),
        ("/nodes/0/properties/1/name", json!("rowid"), "schema.nodes[0].properties[1].name", "system column"),
        ("/nodes/1/name", json!("sqlite_master"), "schema.nodes[1].name", "reserved for the databases' own objects"),
        ("/nodes/1/name", json!("Person_pkey"), "schema.nodes[1].name", "_pkey"),
        // Length.
        ("/nodes/0/properties/1/name", json!(long), "schema.nodes[0].properties[1].name", "10000 characters long; at most 63"),
        ("/name", json!("c".repeat(200)), "schema.name", "at most 128"),
        // Unicode look-alikes and invisible characters.
        ("/nodes/0/name", json!("P\u{0435}rson"), "schema.nodes[0].name", "U+0435 at position 2"),
        ("/nodes/1/name", json!("\u{FF23}ompany"), "schema.nodes[1].name", "not U+FF23"),
        ("/nodes/0/properties/1/name", json!("na\u{200D}me"), "schema.nodes[0].properties[1].name", "U+200D at position 3"),
        ("/name", json!("crm\u{0}"), "schema.name", "control characters"),
        // Duplicates, compared ignoring case.
        ("/nodes/1/name", json!("PERSON"), "schema.nodes[1].name", "clashes with schema.nodes[0]"),
        ("/nodes/0/properties/1/name", json!("ID"), "schema.nodes[0].properties[1].name", "clashes with schema.nodes[0].properties[0]"),
        ("/relationships/0/name", json!("person"), "schema.relationships[0].name", "share one table namespace"),
        ("/relationships/0/properties/0/name", json!("from_id"), "schema.relationships[0].properties[0].name", "generated column \"from_id\""),
        // Types.
        ("/nodes/0/properties/1/type", json!("varchar"), "schema.nodes[0].properties[1].type", "not a property type"),
        ("/nodes/0/properties/1/type", json!("String"), "schema.nodes[0].properties[1].type", "use one of string, int64"),
        ("/nodes/0/properties/1/type", json!(7), "schema.nodes[0].properties[1].type", "must be a string"),
        ("/nodes/1/properties/0/type", json!("float64"), "schema.nodes[1].primary_key", "a primary key must be"),
        ("/nodes/0/properties/1/required", json!("yes"), "schema.nodes[0].properties[1].required", "true or false"),
        // Empty strings.
        ("/name", json!(""), "schema.name", "must not be empty"),
        ("/name", json!("   "), "schema.name", "must not be empty"),
        ("/version", json!(""), "schema.version", "must not be empty"),
        ("/nodes/0/name", json!(""), "schema.nodes[0].name", "must not be empty"),
        ("/nodes/0/properties/1/name", json!(""), "schema.nodes[0].properties[1].name", "must not be empty"),
        ("/nodes/0/primary_key", json!(""), "schema.nodes[0].primary_key", "must name one"),
        ("/relationships/0/from", json!(""), "schema.relationships[0].from", "must name one"),
        // Leading digits and underscores.
        ("/nodes/1/name", json!("1Company"), "schema.nodes[1].name", "must start with an ASCII letter, not '1'"),
        ("/nodes/1/name", json!("_Company"), "schema.nodes[1].name", "must start with an ASCII letter, not '_'"),
        // References and versions.
        ("/nodes/0/primary_key", json!("email"), "schema.nodes[0].primary_key", "not one of this node type's properties"),
        ("/relationships/0/to", json!("Ghost"), "schema.relationships[0].to", "not one of the schema's node types"),
        ("/relationships/0/to", json!("company"), "schema.relationships[0].to", "not one of the schema's node types"),
        ("/version", json!("v1"), "schema.version", "must look like"),
        ("/version", json!("1.2.3.4"), "schema.version", "must look like"),
        // Shape: SQL text where structure belongs, unknown fields and types.
        ("/ddl", json!("CREATE TABLE x (a int)"), "schema", "unknown field \"ddl\""),
        ("/nodes/0/sql", json!("DROP TABLE x"), "schema.nodes[0]", "unknown field \"sql\""),
        ("/schema_type", json!("sql"), "schema.schema_type", "use \"custom\" or \"extensions\""),
        ("/nodes", json!([]), "schema.nodes", "at least one node type"),
        ("/nodes", json!("Person"), "schema.nodes", "must be an array"),
        ("/nodes/1", json!(null), "schema.nodes[1]", "must be a JSON object, not null"),
    ];
    for (pointer, value, field, fragment) in &cases {
        let mut spec = base();
        set(&mut spec, pointer, value.clone());
        let violations = refusal(&spec.to_string());
        assert!(
            violations
                .iter()
                .any(|v| v.field == *field && v.description.contains(fragment)),
            "{pointer} = {value:.60}: expected {field} ({fragment}), got {violations:#?}"
        );
        for v in &violations {
            assert!(
                v.field.starts_with("schema") && v.description.chars().count() < 300,
                "unbounded or misplaced: {v:?}"
            );
        }
    }
}

#[test]
fn hostile_documents_and_extension_lists_are_refused() {
    let cases: Vec<(String, &str, &str)> = vec![
        ("DROP TABLE x; --".into(), "schema", "is not valid JSON"),
        (
            format!("{{\"x\":\"{}\"}}", "a".repeat(300 * 1024)),
            "schema",
            "at most 262144",
        ),
        (
            "[\"custom\"]".into(),
            "schema",
            "must be a JSON object, not an array",
        ),
        (
            json!({"name": "x"}).to_string(),
            "schema.schema_type",
            "is required",
        ),
        (
            json!({"schema_type": "extensions", "extensions": ["social", "socia1"]}).to_string(),
            "schema.extensions[1]",
            "not a built-in extension; available: social, commerce, knowledge",
        ),
        (
            json!({"schema_type": "extensions", "extensions": ["social", "commerce", "social"]})
                .to_string(),
            "schema.extensions[2]",
            "already listed at schema.extensions[0]",
        ),
        (
            json!({"schema_type": "extensions", "extensions": []}).to_string(),
            "schema.extensions",
            "at least one extension",
        ),
        (
            json!({"schema_type": "extensions", "extensions": ["Social"]}).to_string(),
            "schema.extensions[0]",
            "not a built-in extension",
        ),
        (
            json!({"schema_type": "extensions", "extensions": [{"name": "social"}]}).to_string(),
            "schema.extensions[0]",
            "must be a string",
        ),
        (
            json!({"schema_type": "extensions", "extensions": ["social"], "nodes": []}).to_string(),
            "schema",
            "unknown field \"nodes\"",
        ),
    ];
    for (text, field, fragment) in &cases {
        let violations = refusal(text);
        assert!(
            violations
                .iter()
                .any(|v| v.field == *field && v.description.contains(fragment)),
            "{text:.80}: expected {field} ({fragment}), got {violations:#?}"
        );
    }
}

#[test]
fn limits_are_refused_on_the_list_at_fault() {
    let node = |i: usize| json!({"name": format!("N{i}"), "primary_key": "id", "properties": [{"name": "id", "type": "int64"}]});
    let mut spec = base();
    set(&mut spec, "/nodes", (0..65).map(node).collect());
    set(&mut spec, "/relationships", json!([]));
    assert_eq!(refusal(&spec.to_string())[0].field, "schema.nodes");

    let mut spec = base();
    let rel = json!({"name": "R", "from": "Person", "to": "Company"});
    let rels: Vec<Value> = (0..65)
        .map(|i| {
            let mut r = rel.clone();
            r["name"] = json!(format!("R{i}"));
            r
        })
        .collect();
    set(&mut spec, "/relationships", Value::Array(rels));
    assert_eq!(refusal(&spec.to_string())[0].field, "schema.relationships");

    let mut spec = base();
    let props: Vec<Value> = std::iter::once(json!({"name": "id", "type": "int64"}))
        .chain((0..128).map(|i| json!({"name": format!("p{i}"), "type": "bool"})))
        .collect();
    set(&mut spec, "/nodes/1/properties", Value::Array(props));
    assert_eq!(
        refusal(&spec.to_string())[0].field,
        "schema.nodes[1].properties"
    );
}

#[test]
fn every_violation_is_reported_at_once() {
    let mut spec = base();
    set(&mut spec, "/nodes/0/name", json!("select"));
    set(&mut spec, "/nodes/1/properties/0/name", json!("Ｉd"));
    set(&mut spec, "/relationships/0/from", json!("Nobody"));
    set(&mut spec, "/version", json!("one"));
    let fields: BTreeSet<String> = refusal(&spec.to_string())
        .into_iter()
        .map(|v| v.field)
        .collect();
    for expected in [
        "schema.version",
        "schema.nodes[0].name",
        "schema.nodes[1].properties[0].name",
        "schema.nodes[1].primary_key",
        "schema.relationships[0].from",
    ] {
        assert!(
            fields.contains(expected),
            "{expected} missing from {fields:?}"
        );
    }
}

// ---------- real databases ----------

/// What a database says about one graph's tables.
#[derive(Debug, Default, PartialEq, Eq)]
struct Introspected {
    /// table → (column, reported type, NOT NULL) in column order
    columns: BTreeMap<String, Vec<(String, String, bool)>>,
    primary_keys: BTreeMap<String, Vec<String>>,
    /// (table, column, referenced table, referenced column)
    foreign_keys: BTreeSet<(String, String, String, String)>,
}

/// The documented mapping, as each database reports it back.
fn sqlite_reports(ty: PropertyType) -> &'static str {
    match ty {
        PropertyType::String
        | PropertyType::Timestamp
        | PropertyType::Date
        | PropertyType::Json => "TEXT",
        PropertyType::Int64 | PropertyType::Bool => "INTEGER",
        PropertyType::Float64 => "REAL",
    }
}

fn postgres_reports(ty: PropertyType) -> &'static str {
    match ty {
        PropertyType::String => "text",
        PropertyType::Int64 => "bigint",
        PropertyType::Float64 => "double precision",
        PropertyType::Bool => "boolean",
        PropertyType::Timestamp => "timestamp with time zone",
        PropertyType::Date => "date",
        PropertyType::Json => "jsonb",
    }
}

fn expected(valid: &ValidSchema, reports: fn(PropertyType) -> &'static str) -> Introspected {
    let mut out = Introspected::default();
    for t in valid.tables() {
        out.columns.insert(
            t.name.clone(),
            t.columns
                .iter()
                .map(|(c, ty, not_null)| (c.clone(), reports(*ty).to_string(), *not_null))
                .collect(),
        );
        out.primary_keys
            .insert(t.name.clone(), t.primary_key.clone());
        for (c, rt, rc) in &t.foreign_keys {
            out.foreign_keys
                .insert((t.name.clone(), c.clone(), rt.clone(), rc.clone()));
        }
    }
    out
}

async fn sqlite_introspect(conn: &mut SqliteConnection) -> Introspected {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("list tables");
    let mut out = Introspected::default();
    for table in tables {
        let rows = sqlx::query(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid",
        )
        .bind(&table)
        .fetch_all(&mut *conn)
        .await
        .expect("table_info");
        let mut keys: Vec<(i64, String)> = Vec::new();
        let mut columns = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            let pk: i64 = row.get(3);
            if pk > 0 {
                keys.push((pk, name.clone()));
            }
            columns.push((name, row.get::<String, _>(1), row.get::<i64, _>(2) == 1));
        }
        keys.sort();
        out.primary_keys
            .insert(table.clone(), keys.into_iter().map(|(_, n)| n).collect());
        out.columns.insert(table.clone(), columns);
        let fks =
            sqlx::query("SELECT \"from\", \"table\", \"to\" FROM pragma_foreign_key_list(?1)")
                .bind(&table)
                .fetch_all(&mut *conn)
                .await
                .expect("foreign_key_list");
        for fk in fks {
            out.foreign_keys
                .insert((table.clone(), fk.get(0), fk.get(1), fk.get(2)));
        }
    }
    out
}

async fn postgres_introspect(conn: &mut PgConnection, schema: &str) -> Introspected {
    let mut out = Introspected::default();
    let columns = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns WHERE table_schema = $1 \
         ORDER BY table_name, ordinal_position",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .expect("information_schema.columns");
    for row in columns {
        out.columns.entry(row.get(0)).or_default().push((
            row.get(1),
            row.get(2),
            row.get::<String, _>(3) == "NO",
        ));
    }
    let keys = sqlx::query(
        "SELECT cl.relname::text, a.attname::text FROM pg_constraint c \
         JOIN pg_class cl ON cl.oid = c.conrelid \
         JOIN pg_namespace n ON n.oid = cl.relnamespace \
         CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum \
         WHERE c.contype = 'p' AND n.nspname = $1 ORDER BY cl.relname, k.ord",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .expect("primary keys");
    for row in keys {
        out.primary_keys
            .entry(row.get(0))
            .or_default()
            .push(row.get(1));
    }
    let fks = sqlx::query(
        "SELECT cl.relname::text, a.attname::text, rcl.relname::text, ra.attname::text \
         FROM pg_constraint c \
         JOIN pg_class cl ON cl.oid = c.conrelid \
         JOIN pg_namespace n ON n.oid = cl.relnamespace \
         JOIN pg_class rcl ON rcl.oid = c.confrelid \
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
         JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1] \
         WHERE c.contype = 'f' AND n.nspname = $1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .expect("foreign keys");
    for row in fks {
        out.foreign_keys
            .insert((row.get(0), row.get(1), row.get(2), row.get(3)));
    }
    out
}

/// Runs statements in one transaction, as provisioning does.
async fn apply<C>(conn: &mut C, statements: &[String]) -> Result<(), sqlx::Error>
where
    C: Connection,
    for<'c> &'c mut <C::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = C::Database>,
    for<'q> <C::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, C::Database>,
{
    let mut tx = conn.begin().await?;
    for statement in statements {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Creates the schema in a fresh SQLite file, checks what the database reports, drops it.
async fn sqlite_round_trip(valid: &ValidSchema) {
    let db = TestDb::sqlite();
    let mut conn = SqliteConnection::connect(&db.url).await.expect("sqlite");
    let create = ddl::generate(valid, &Dialect::Sqlite);
    if let Err(e) = apply(&mut conn, &create).await {
        panic!("SQLite refused {create:#?}: {e}");
    }
    assert_eq!(
        sqlite_introspect(&mut conn).await,
        expected(valid, sqlite_reports)
    );
    apply(&mut conn, &ddl::drop_statements(valid, &Dialect::Sqlite))
        .await
        .expect("drop");
    assert_eq!(sqlite_introspect(&mut conn).await, Introspected::default());
}

/// Same in a fresh Postgres schema of `conn`'s database; the schema is removed at the end.
async fn postgres_round_trip(conn: &mut PgConnection, valid: &ValidSchema) {
    let dialect = Dialect::postgres_for_graph(&Uuid::new_v4());
    let Dialect::Postgres { schema } = &dialect else {
        unreachable!("a Postgres dialect")
    };
    let create: Vec<String> = ddl::create_namespace(&dialect)
        .into_iter()
        .chain(ddl::generate(valid, &dialect))
        .collect();
    if let Err(e) = apply(conn, &create).await {
        panic!("Postgres refused {create:#?}: {e}");
    }
    assert_eq!(
        postgres_introspect(conn, schema).await,
        expected(valid, postgres_reports)
    );
    apply(conn, &ddl::drop_statements(valid, &dialect))
        .await
        .expect("drop");
    assert_eq!(
        postgres_introspect(conn, schema).await,
        Introspected::default()
    );
    let drop_schema: Vec<String> = ddl::drop_namespace(&dialect).into_iter().collect();
    apply(conn, &drop_schema).await.expect("drop schema");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(schema)
        .fetch_one(&mut *conn)
        .await
        .expect("count schemas");
    assert_eq!(left, 0);
}

fn all_extension_schemas() -> Vec<ValidSchema> {
    let names: Vec<String> = extensions::catalog()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    names
        .iter()
        .map(|n| vec![n.clone()])
        .chain([names.clone()])
        .map(|extensions| {
            SchemaSpec::Extensions { extensions }
                .validate()
                .expect("valid")
        })
        .chain([SchemaSpec::from_json(&base().to_string())
            .and_then(|s| s.validate())
            .expect("valid")])
        .collect()
}

#[tokio::test]
async fn extensions_and_custom_schemas_provision_on_sqlite() {
    for valid in all_extension_schemas() {
        sqlite_round_trip(&valid).await;
    }
}

#[tokio::test]
async fn extensions_and_custom_schemas_provision_on_postgres() {
    let db = TestDb::postgres().await;
    let mut conn = PgConnection::connect(&db.url).await.expect("postgres");
    for valid in all_extension_schemas() {
        postgres_round_trip(&mut conn, &valid).await;
    }
}

/// The generated constraints hold: keys, references, types (SQLite STRICT and CHECKs).
#[tokio::test]
async fn generated_constraints_are_enforced() {
    let spec = json!({
        "schema_type": "custom", "name": "c", "version": "1",
        "nodes": [
            {"name": "A", "primary_key": "id", "properties": [{"name": "id", "type": "int64"}]},
            {"name": "B", "primary_key": "id", "properties": [
                {"name": "id", "type": "string"}, {"name": "flag", "type": "bool"}, {"name": "doc", "type": "json"}]}
        ],
        "relationships": [{"name": "R", "from": "A", "to": "B"}]
    });
    let valid = SchemaSpec::from_json(&spec.to_string())
        .and_then(|s| s.validate())
        .expect("valid");

    let db = TestDb::sqlite();
    let mut conn = SqliteConnection::connect(&db.url).await.expect("sqlite");
    apply(&mut conn, &ddl::generate(&valid, &Dialect::Sqlite))
        .await
        .expect("create");
    let run = |sql: &'static str| sql.to_string();
    let refused = [
        "INSERT INTO \"R\" VALUES (1, 'x')",             // dangling edge
        "INSERT INTO \"A\" VALUES ('one')",              // STRICT type
        "INSERT INTO \"B\" VALUES ('y', 2, NULL)",       // bool CHECK
        "INSERT INTO \"B\" VALUES ('y', 1, 'not json')", // json CHECK
        "INSERT INTO \"A\" VALUES (NULL)",               // key NOT NULL
    ];
    for sql in refused {
        assert!(
            apply(&mut conn, &[run(sql)]).await.is_err(),
            "SQLite accepted {sql}"
        );
    }
    let edge = [
        run("INSERT INTO \"A\" VALUES (1)"),
        run("INSERT INTO \"B\" VALUES ('x', 1, '{\"k\": [1]}')"),
        run("INSERT INTO \"R\" VALUES (1, 'x')"),
    ];
    apply(&mut conn, &edge).await.expect("a consistent graph");
    assert!(
        apply(&mut conn, &[run("INSERT INTO \"R\" VALUES (1, 'x')")])
            .await
            .is_err(),
        "duplicate edge"
    );

    let pg = TestDb::postgres().await;
    let mut conn = PgConnection::connect(&pg.url).await.expect("postgres");
    let dialect = Dialect::postgres_for_graph(&Uuid::new_v4());
    let Dialect::Postgres { schema } = &dialect else {
        unreachable!("a Postgres dialect")
    };
    let create: Vec<String> = ddl::create_namespace(&dialect)
        .into_iter()
        .chain(ddl::generate(&valid, &dialect))
        .collect();
    apply(&mut conn, &create).await.expect("create");
    let q = |sql: &str| {
        sql.replace("\"A\"", &format!("\"{schema}\".\"A\""))
            .replace("\"B\"", &format!("\"{schema}\".\"B\""))
            .replace("\"R\"", &format!("\"{schema}\".\"R\""))
    };
    for sql in [
        "INSERT INTO \"R\" VALUES (1, 'x')",
        "INSERT INTO \"A\" VALUES ('one')",
        "INSERT INTO \"B\" VALUES ('y', true, 'not json')",
        "INSERT INTO \"A\" VALUES (NULL)",
    ] {
        assert!(
            apply(&mut conn, &[q(sql)]).await.is_err(),
            "Postgres accepted {sql}"
        );
    }
    let edge = [
        q("INSERT INTO \"A\" VALUES (1)"),
        q("INSERT INTO \"B\" VALUES ('x', true, '{\"k\": [1]}')"),
        q("INSERT INTO \"R\" VALUES (1, 'x')"),
    ];
    apply(&mut conn, &edge).await.expect("a consistent graph");
    assert!(
        apply(&mut conn, &[q("INSERT INTO \"R\" VALUES (1, 'x')")])
            .await
            .is_err(),
        "duplicate edge"
    );
}

// ---------- properties ----------

fn name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z][A-Za-z0-9_]{0,10}",
        1 => "[A-Za-z][A-Za-z0-9_]{40,62}",
    ]
    .prop_filter("a valid table or column name", |s| {
        ident::check_table(s).is_ok()
    })
}

/// Primary keys stay short enough for `from_<key>` to be an identifier too.
fn key_strategy() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,20}".prop_filter("a valid column name", |s| ident::check_table(s).is_ok())
}

fn type_strategy() -> impl Strategy<Value = PropertyType> {
    proptest::sample::select(PropertyType::ALL.to_vec())
}

type RawNode<N> = (N, N, PropertyType, Vec<(N, PropertyType, bool)>);
type RawRel<N> = (N, Index, Index, Vec<(N, PropertyType, bool)>);

/// Claims `name` in `seen`, ignoring case; false when it was taken.
fn unique(seen: &mut BTreeSet<String>, name: &str) -> bool {
    seen.insert(name.to_ascii_lowercase())
}

/// Nodes and relationships from raw parts, with names made unique the way validation
/// compares them (ignoring case) so that every spec built is valid by the rules.
fn valid_schema(
    name: String,
    version: String,
    nodes: Vec<RawNode<String>>,
    rels: Vec<RawRel<String>>,
) -> CustomSchema {
    let mut tables = BTreeSet::new();
    let mut schema = CustomSchema {
        name,
        version,
        nodes: vec![],
        relationships: vec![],
    };
    for (node_name, key, key_ty, props) in nodes {
        if !unique(&mut tables, &node_name) {
            continue;
        }
        let mut seen = BTreeSet::new();
        unique(&mut seen, &key);
        let key_ty = if key_ty.can_be_key() {
            key_ty
        } else {
            PropertyType::String
        };
        let mut properties = vec![Property {
            name: key.clone(),
            ty: key_ty,
            required: false,
        }];
        for (n, ty, required) in props {
            if unique(&mut seen, &n) {
                properties.push(Property {
                    name: n,
                    ty,
                    required,
                });
            }
        }
        schema.nodes.push(NodeType {
            name: node_name,
            primary_key: key,
            properties,
        });
    }
    for (rel_name, from, to, props) in rels {
        if !unique(&mut tables, &rel_name) {
            continue;
        }
        let from = &schema.nodes[from.index(schema.nodes.len())];
        let to = &schema.nodes[to.index(schema.nodes.len())];
        let mut seen = BTreeSet::new();
        unique(&mut seen, &format!("from_{}", from.primary_key));
        unique(&mut seen, &format!("to_{}", to.primary_key));
        let properties = props
            .into_iter()
            .filter(|(n, _, _)| unique(&mut seen, n))
            .map(|(name, ty, required)| Property { name, ty, required })
            .collect();
        let rel = RelationshipType {
            name: rel_name,
            from: from.name.clone(),
            to: to.name.clone(),
            properties,
        };
        schema.relationships.push(rel);
    }
    schema
}

fn custom_strategy() -> impl Strategy<Value = CustomSchema> {
    let props =
        || proptest::collection::vec((name_strategy(), type_strategy(), any::<bool>()), 0..5);
    let node = (name_strategy(), key_strategy(), type_strategy(), props());
    let rel = (name_strategy(), any::<Index>(), any::<Index>(), props());
    (
        "[A-Za-z][A-Za-z0-9 ._-]{0,30}[A-Za-z0-9]",
        "[0-9]{1,3}(\\.[0-9]{1,3}){0,2}",
        proptest::collection::vec(node, 1..6),
        proptest::collection::vec(rel, 0..6),
    )
        .prop_map(|(name, version, nodes, rels)| valid_schema(name, version, nodes, rels))
}

/// Any spec built from valid identifiers validates, and its DDL creates exactly the declared
/// tables and columns on a real SQLite file and in a fresh schema of a real Postgres database,
/// and its drop statements remove them all.
#[test]
fn any_valid_spec_provisions_and_drops_on_both_databases() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let pg = rt.block_on(TestDb::postgres());
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    let result = runner.run(&custom_strategy(), |custom| {
        let spec = SchemaSpec::Custom(custom);
        let valid = spec
            .validate()
            .map_err(|e| TestCaseError::fail(format!("refused {spec:?}: {e:?}")))?;
        rt.block_on(async {
            sqlite_round_trip(&valid).await;
            let mut conn = PgConnection::connect(&pg.url).await.expect("postgres");
            postgres_round_trip(&mut conn, &valid).await;
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

const HOSTILE: &[&str] = &[
    "select",
    "Table",
    "order",
    "x\"y",
    "a;b",
    "--",
    "/*",
    "*/",
    "P\u{0435}rson",
    "\u{FF30}erson",
    "Per\u{200D}son",
    "",
    "1abc",
    "_abc",
    "xmin",
    "rowid",
    "sqlite_x",
    "a b",
    "A_pkey",
    "a'b",
    "\"); DROP TABLE x; --",
    "Person",
];

fn wild_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => name_strategy(),
        1 => any::<String>(),
        2 => proptest::sample::select(HOSTILE).prop_map(String::from),
        1 => (name_strategy(), proptest::sample::select(HOSTILE)).prop_map(|(a, b)| format!("{a}{b}")),
        1 => "[A-Za-z]{64,80}",
    ]
}

fn wild_strategy() -> impl Strategy<Value = SchemaSpec> {
    let props = || proptest::collection::vec((wild_name(), type_strategy(), any::<bool>()), 0..4);
    let node =
        (wild_name(), wild_name(), props()).prop_map(|(name, primary_key, mut properties)| {
            // Usually make the key one of the properties, so validation gets past it.
            if let Some(p) = properties.first_mut() {
                p.0 = primary_key.clone();
            }
            NodeType {
                name,
                primary_key,
                properties: properties
                    .into_iter()
                    .map(|(name, ty, required)| Property { name, ty, required })
                    .collect(),
            }
        });
    let rel = (wild_name(), wild_name(), wild_name(), props()).prop_map(
        |(name, from, to, properties)| RelationshipType {
            name,
            from,
            to,
            properties: properties
                .into_iter()
                .map(|(name, ty, required)| Property { name, ty, required })
                .collect(),
        },
    );
    let name = prop_oneof![3 => "[a-z][a-z ]{0,8}[a-z]", 1 => any::<String>()];
    let version = prop_oneof![3 => "[0-9]{1,2}(\\.[0-9]){0,2}", 1 => "[0-9.]{0,6}"];
    let custom = (
        name,
        version,
        proptest::collection::vec(node, 0..4),
        proptest::collection::vec(rel, 0..4),
    )
        .prop_map(|(name, version, nodes, relationships)| {
            SchemaSpec::Custom(CustomSchema {
                name,
                version,
                nodes,
                relationships,
            })
        });
    let names = proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(vec!["social", "commerce", "knowledge"])
                .prop_map(String::from),
            wild_name()
        ],
        0..4,
    );
    // A valid spec with a few names replaced: each hostile name meets every rule in turn.
    let mutated = (
        custom_strategy(),
        proptest::collection::vec((any::<Index>(), wild_name()), 0..3),
    )
        .prop_map(|(mut schema, replacements)| {
            for (at, name) in replacements {
                let mut names = names_mut(&mut schema);
                let len = names.len();
                *names[at.index(len)] = name;
            }
            SchemaSpec::Custom(schema)
        });
    prop_oneof![
        3 => mutated,
        2 => custom,
        1 => names.prop_map(|extensions| SchemaSpec::Extensions { extensions }),
    ]
}

/// Every name in a schema that ends up in DDL or refers to something that does.
fn names_mut(schema: &mut CustomSchema) -> Vec<&mut String> {
    let mut out = Vec::new();
    for node in &mut schema.nodes {
        out.push(&mut node.name);
        out.push(&mut node.primary_key);
        out.extend(node.properties.iter_mut().map(|p| &mut p.name));
    }
    for rel in &mut schema.relationships {
        out.push(&mut rel.name);
        out.push(&mut rel.from);
        out.push(&mut rel.to);
        out.extend(rel.properties.iter_mut().map(|p| &mut p.name));
    }
    out
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    /// Arbitrary strings as names: validation refuses them or they are identifiers, and no
    /// generated statement contains anything but quoted identifiers matching the identifier rule
    /// and DDL key words.
    #[test]
    fn arbitrary_names_never_reach_ddl_unchecked(spec in wild_strategy()) {
        // The reader agrees with serde on everything serde writes.
        let text = serde_json::to_string(&spec).expect("serializes");
        prop_assert_eq!(SchemaSpec::from_json(&text), Ok(spec.clone()));

        let re = identifier_regex();
        match spec.validate() {
            Err(violations) => {
                prop_assert!(!violations.is_empty());
                for v in &violations {
                    prop_assert!(v.field.starts_with("schema"), "{:?}", v);
                    prop_assert!(v.description.chars().count() < 400, "{:?}", v);
                }
            }
            Ok(valid) => {
                for t in valid.tables() {
                    prop_assert!(re.is_match(&t.name));
                    for (c, _, _) in &t.columns {
                        prop_assert!(re.is_match(c), "{}", c);
                    }
                }
                let dialects = [Dialect::Sqlite, Dialect::postgres_for_graph(&Uuid::new_v4())];
                for dialect in &dialects {
                    let statements = ddl::generate(&valid, dialect)
                        .into_iter()
                        .chain(ddl::drop_statements(&valid, dialect));
                    for statement in statements {
                        prop_assert_eq!(ddl::audit(&statement), Ok(()), "{}", statement);
                        for quoted in statement.split('"').skip(1).step_by(2) {
                            prop_assert!(re.is_match(quoted), "{:?} in {}", quoted, statement);
                        }
                    }
                }
            }
        }
    }

    /// Any text at all: reading never panics, and a refusal always says where.
    #[test]
    fn any_text_is_read_or_refused(text in prop_oneof![
        any::<String>(),
        "\\{\"schema_type\":\"(custom|extensions)\"[ -~]{0,80}\\}",
    ]) {
        if let Err(violations) = SchemaSpec::from_json(&text).and_then(|s| s.validate()) {
            prop_assert!(violations.iter().all(|v| v.field.starts_with("schema")));
        }
    }
}
