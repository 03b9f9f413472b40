//! Provisioning test support: operation watching, the requests' graph specs, and direct
//! looks into the real databases (the pipeline's tables, graph files and schemas).

use std::{collections::BTreeMap, path::PathBuf};

use capstan_proto::pipeline::v1 as pb;
use pipeline_svc::{
    domain::provisioning::{ddl, PropertyType, SchemaSpec, ValidSchema},
    store::sql::POSTGRES_SCHEMA,
};
use sqlx::{
    any::AnyPoolOptions, sqlite::SqliteConnectOptions, AnyPool, Connection, Row, SqliteConnection,
};
use tonic::Code;

use super::until_finished;
pub use super::{
    server::{Env, Server},
    OperationsClient as OpsClient,
};

impl Env {
    /// A pool on the pipeline's database (its tables; on Postgres also the graph schemas).
    pub async fn pool(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        let schema = self.postgres();
        AnyPoolOptions::new()
            .max_connections(2)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if schema {
                        sqlx::Executor::execute(
                            conn,
                            format!("SET search_path TO {POSTGRES_SCHEMA}").as_str(),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&self.database_url)
            .await
            .expect("pipeline database")
    }
}

pub async fn count(pool: &AnyPool, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(bind)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Rows the pipeline holds for a graph: (graphs, graph_schemas, credit_pools).
pub async fn graph_rows(pool: &AnyPool, graph_id: &str) -> (i64, i64, i64) {
    (
        count(
            pool,
            "SELECT count(*) FROM graphs WHERE graph_id = $1",
            graph_id,
        )
        .await,
        count(
            pool,
            "SELECT count(*) FROM graph_schemas WHERE graph_id = $1",
            graph_id,
        )
        .await,
        count(
            pool,
            "SELECT count(*) FROM credit_pools WHERE graph_id = $1",
            graph_id,
        )
        .await,
    )
}

/// Whether the graph's database exists: its SQLite file, or its Postgres schema.
pub async fn graph_database_exists(env: &Env, pool: &AnyPool, graph_id: &str) -> bool {
    let id = uuid::Uuid::parse_str(graph_id).expect("graph id");
    if env.postgres() {
        count(
            pool,
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &ddl::graph_schema_name(&id),
        )
        .await
            > 0
    } else {
        graph_file(env, graph_id).exists()
    }
}

pub fn graph_file(env: &Env, graph_id: &str) -> PathBuf {
    env.data_dir.join("graphs").join(format!("{graph_id}.db"))
}

/// Everything in the graphs directory (SQLite) or every graph schema (Postgres).
pub async fn all_graph_databases(env: &Env, pool: &AnyPool) -> Vec<String> {
    if env.postgres() {
        sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'graph\\_%' ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .expect("schemas")
    } else {
        match std::fs::read_dir(env.data_dir.join("graphs")) {
            Ok(entries) => entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// table -> [(column, reported type, NOT NULL)], as the real database reports them.
pub type Columns = BTreeMap<String, Vec<(String, String, bool)>>;

pub async fn introspect(env: &Env, pool: &AnyPool, graph: &pb::Graph) -> Columns {
    let mut out = Columns::new();
    if env.postgres() {
        let rows = sqlx::query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
             FROM information_schema.columns WHERE table_schema = $1 \
             ORDER BY table_name, ordinal_position",
        )
        .bind(&graph.database_location)
        .fetch_all(pool)
        .await
        .expect("information_schema");
        for row in rows {
            out.entry(row.get(0)).or_default().push((
                row.get(1),
                row.get(2),
                row.get::<String, _>(3) == "NO",
            ));
        }
    } else {
        let options = SqliteConnectOptions::new()
            .filename(&graph.database_location)
            .read_only(true);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .expect("the graph's SQLite file opens");
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(&mut conn)
        .await
        .expect("tables");
        for table in tables {
            let rows = sqlx::query("SELECT name, type, \"notnull\" FROM pragma_table_info(?1)")
                .bind(&table)
                .fetch_all(&mut conn)
                .await
                .expect("table_info");
            out.insert(
                table,
                rows.iter()
                    .map(|r| (r.get(0), r.get(1), r.get::<i64, _>(2) == 1))
                    .collect(),
            );
        }
    }
    out
}

/// What `introspect` must find for `spec`.
pub fn expected_columns(spec: &SchemaSpec, postgres: bool) -> Columns {
    let valid: ValidSchema = spec.validate().expect("valid spec");
    valid
        .tables()
        .into_iter()
        .map(|t| {
            let cols = t
                .columns
                .iter()
                .map(|(c, ty, not_null)| (c.clone(), reported(*ty, postgres).into(), *not_null))
                .collect();
            (t.name, cols)
        })
        .collect()
}

fn reported(ty: PropertyType, postgres: bool) -> &'static str {
    match (postgres, ty) {
        (true, PropertyType::String) => "text",
        (true, PropertyType::Int64) => "bigint",
        (true, PropertyType::Float64) => "double precision",
        (true, PropertyType::Bool) => "boolean",
        (true, PropertyType::Timestamp) => "timestamp with time zone",
        (true, PropertyType::Date) => "date",
        (true, PropertyType::Json) => "jsonb",
        (false, PropertyType::Int64 | PropertyType::Bool) => "INTEGER",
        (false, PropertyType::Float64) => "REAL",
        (false, _) => "TEXT",
    }
}

/// Every event of an operation over `WatchOperation` until the terminal one (heartbeats
/// dropped), and the operation afterwards.
pub async fn watch(
    ops: &mut OpsClient,
    operation_id: &str,
) -> (Vec<pb::OperationEvent>, pb::Operation) {
    let mut stream = ops
        .watch_operation(pb::WatchOperationRequest {
            operation_id: operation_id.into(),
            after_sequence: 0,
        })
        .await
        .expect("WatchOperation")
        .into_inner();
    let events = until_finished(&mut stream, &format!("operation {operation_id}")).await;
    let op = ops
        .get_operation(pb::GetOperationRequest {
            operation_id: operation_id.into(),
        })
        .await
        .expect("GetOperation")
        .into_inner();
    (events, op)
}

/// The stream's invariants: sequences 1, 2, 3… without gaps, percent never backwards, one
/// terminal event, last.
pub fn assert_well_formed(events: &[pb::OperationEvent]) {
    assert!(!events.is_empty());
    let mut percent = 0;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.sequence,
            i as i64 + 1,
            "gap or repeat at {i}: {events:#?}"
        );
        assert!(e.percent >= percent, "percent went backwards at {i}");
        percent = e.percent;
        let terminal = e.r#type == pb::OperationEventType::Finished as i32;
        assert_eq!(terminal, i == events.len() - 1, "terminal event at {i}");
    }
}

pub fn provisioning_result(op: &pb::Operation) -> pb::ProvisioningResult {
    match op.result.as_ref().and_then(|r| r.result.clone()) {
        Some(pb::operation_result::Result::Provisioning(p)) => p,
        other => panic!("operation has no provisioning result: {other:?}"),
    }
}

pub fn prop(name: &str, ty: pb::PropertyType, required: bool) -> pb::Property {
    pb::Property {
        name: name.into(),
        r#type: ty as i32,
        required,
    }
}

/// A custom schema using every property type.
pub fn custom_graph(name: &str) -> pb::GraphSpec {
    use pb::PropertyType as T;
    pb::GraphSpec {
        name: name.into(),
        schema: Some(pb::graph_spec::Schema::Custom(pb::CustomSchema {
            name: "crm".into(),
            version: "1.2.0".into(),
            nodes: vec![
                pb::NodeType {
                    name: "Person".into(),
                    primary_key: "id".into(),
                    properties: vec![
                        prop("id", T::String, true),
                        prop("name", T::String, true),
                        prop("age", T::Int64, false),
                        prop("score", T::Float64, false),
                        prop("active", T::Bool, false),
                        prop("born_on", T::Date, false),
                        prop("seen_at", T::Timestamp, false),
                        prop("profile", T::Json, false),
                    ],
                },
                pb::NodeType {
                    name: "Company".into(),
                    primary_key: "id".into(),
                    properties: vec![prop("id", T::Int64, true), prop("name", T::String, false)],
                },
            ],
            relationships: vec![pb::RelationshipType {
                name: "WORKS_AT".into(),
                from: "Person".into(),
                to: "Company".into(),
                properties: vec![prop("since", T::Date, false)],
            }],
        })),
    }
}

/// The domain spec `custom_graph` stands for (to compute the expected tables).
pub fn custom_spec() -> SchemaSpec {
    SchemaSpec::from_json(
        r#"{"schema_type":"custom","name":"crm","version":"1.2.0","nodes":[
            {"name":"Person","primary_key":"id","properties":[
              {"name":"id","type":"string","required":true},{"name":"name","type":"string","required":true},
              {"name":"age","type":"int64"},{"name":"score","type":"float64"},{"name":"active","type":"bool"},
              {"name":"born_on","type":"date"},{"name":"seen_at","type":"timestamp"},{"name":"profile","type":"json"}]},
            {"name":"Company","primary_key":"id","properties":[
              {"name":"id","type":"int64","required":true},{"name":"name","type":"string"}]}],
          "relationships":[{"name":"WORKS_AT","from":"Person","to":"Company","properties":[{"name":"since","type":"date"}]}]}"#,
    )
    .expect("spec")
}

pub fn extensions_graph(name: &str, extensions: &[&str]) -> pb::GraphSpec {
    pb::GraphSpec {
        name: name.into(),
        schema: Some(pb::graph_spec::Schema::Extensions(pb::ExtensionsSchema {
            extensions: extensions.iter().map(|e| e.to_string()).collect(),
        })),
    }
}

pub fn extensions_spec(extensions: &[&str]) -> SchemaSpec {
    SchemaSpec::Extensions {
        extensions: extensions.iter().map(|e| e.to_string()).collect(),
    }
}

/// The status code of a call that must fail.
pub fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}
