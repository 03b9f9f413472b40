//! The [`GraphDatabases`] contract: a graph's own database is created once, takes DDL in
//! one transaction (all of it or none), refuses statements that fail the audit before
//! running any, and is removed with everything in it.

use pipeline_svc::{
    domain::provisioning::{
        ddl::{self, Dialect},
        SchemaSpec, ValidSchema,
    },
    error::Error,
};
use uuid::Uuid;

use super::Stores;
use crate::common::TestDb;

capstan_server::test_on_both_backends!(
    worker_threads = 4;
    create_is_idempotent_and_remove_reports_what_it_found,
    statements_run_in_one_transaction,
    unaudited_statements_never_run,
);

fn schema() -> ValidSchema {
    SchemaSpec::Extensions {
        extensions: vec!["commerce".into()],
    }
    .validate()
    .expect("a built-in extension is valid")
}

fn table_names(valid: &ValidSchema) -> Vec<String> {
    let mut names: Vec<_> = valid.tables().into_iter().map(|t| t.name).collect();
    names.sort();
    names
}

async fn create_is_idempotent_and_remove_reports_what_it_found(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let g = &s.graphs;
    let id = Uuid::now_v7();
    let postgres = db.is_postgres();
    assert_eq!(g.backend(), if postgres { "postgres" } else { "sqlite" });
    let location = g.location(id);
    match g.dialect(id) {
        Dialect::Sqlite => assert!(
            !postgres && location.contains(&id.to_string()),
            "{location}"
        ),
        Dialect::Postgres { schema } => {
            assert!(postgres);
            assert_eq!(
                (schema.as_str(), location.as_str()),
                (ddl::graph_schema_name(&id).as_str(), schema.as_str())
            );
        }
    }
    assert!(!g.exists(id).await.unwrap());
    assert!(g.tables(id).await.unwrap().is_empty());
    assert!(!g.remove(id).await.unwrap(), "nothing to remove");
    g.create(id).await.unwrap();
    g.create(id).await.expect("an existing database is kept");
    assert!(g.exists(id).await.unwrap());
    assert!(g.tables(id).await.unwrap().is_empty(), "created empty");
    let valid = schema();
    g.execute(id, &ddl::generate(&valid, &g.dialect(id)))
        .await
        .unwrap();
    g.create(id).await.unwrap();
    assert_eq!(
        g.tables(id).await.unwrap(),
        table_names(&valid),
        "kept with its tables"
    );
    assert!(g.remove(id).await.unwrap());
    assert!(!g.exists(id).await.unwrap());
    assert!(!g.remove(id).await.unwrap());
    let err = g
        .execute(id, &ddl::generate(&valid, &g.dialect(id)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. }),
        "DDL needs the database to exist: {err}"
    );
}

async fn statements_run_in_one_transaction(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let g = &s.graphs;
    let id = Uuid::now_v7();
    g.create(id).await.unwrap();
    let valid = schema();
    let create = ddl::generate(&valid, &g.dialect(id));
    // The last statement fails (its table exists by then): none of them stays.
    let mut failing = create.clone();
    failing.push(create[0].clone());
    assert!(g.execute(id, &failing).await.is_err());
    assert!(g.tables(id).await.unwrap().is_empty(), "rolled back");
    g.execute(id, &create).await.unwrap();
    assert_eq!(g.tables(id).await.unwrap(), table_names(&valid));
    g.execute(id, &ddl::drop_statements(&valid, &g.dialect(id)))
        .await
        .unwrap();
    assert!(g.tables(id).await.unwrap().is_empty());
    g.execute(id, &ddl::drop_statements(&valid, &g.dialect(id)))
        .await
        .expect("dropping what is gone already is no error");
    g.remove(id).await.unwrap();
}

async fn unaudited_statements_never_run(db: TestDb) {
    let s = Stores::open(&db, "r1").await;
    let g = &s.graphs;
    let id = Uuid::now_v7();
    g.create(id).await.unwrap();
    let valid = schema();
    let mut statements = ddl::generate(&valid, &g.dialect(id));
    statements.push("DROP TABLE pipeline_tables; --".into());
    let err = g.execute(id, &statements).await.unwrap_err();
    assert!(matches!(err, Error::Internal { .. }), "{err}");
    assert!(
        g.tables(id).await.unwrap().is_empty(),
        "no statement ran, not even the audited ones before it"
    );
    g.remove(id).await.unwrap();
}
