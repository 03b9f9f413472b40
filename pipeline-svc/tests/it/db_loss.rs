//! A lost database under load. While clients provision graphs (each a durable operation
//! of eight steps) and read them, every connection of the pipeline's own Postgres
//! database is terminated, three times (`pg_terminate_backend`, as a restart or failover
//! would; other tests' databases are left alone). Every error a client sees is
//! UNAVAILABLE or ABORTED (retryable), writes succeed again within a few seconds without
//! anybody restarting anything, and every operation the server acknowledged is still
//! there and runs to SUCCEEDED.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use capstan_proto::pipeline::v1 as pb;
use capstan_server::auth::Role;
use tonic::Code;

use crate::common::{
    eventually,
    provisioning::{custom_graph, Env},
    TestDb,
};

const WRITERS: usize = 4;
const KILLS: usize = 3;
/// How soon after a kill a write must succeed again.
const RESUME_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_connections_are_retryable_and_lose_nothing() {
    let db = TestDb::postgres().await;
    tokio::time::timeout(Duration::from_secs(180), drill(db))
        .await
        .expect("the drill finishes within its time bound");
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged ProvisionGraph calls: operation id → graph id.
    acknowledged: BTreeMap<String, String>,
    /// Status codes of every failed call, with a message each.
    errors: Vec<(Code, String)>,
    /// When each successful write returned.
    successes: Vec<Instant>,
}

async fn drill(db: TestDb) {
    let env = Env::new(db);
    let server = env.server(&[]).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for w in 0..WRITERS {
        let (seen, stop) = (seen.clone(), stop.clone());
        let mut graphs = server.provisioning(&format!("user-{w}"), Role::User).await;
        let mut ops = server.operations(&format!("user-{w}"), Role::User).await;
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let request = pb::ProvisionGraphRequest {
                    graph: Some(custom_graph(&format!("g{w}-{n}"))),
                    request_id: format!("w{w}-{n}"),
                    ..Default::default()
                };
                let written = graphs.provision_graph(request).await;
                let read = ops
                    .list_operations(pb::ListOperationsRequest::default())
                    .await;
                {
                    let mut seen = seen.lock().unwrap();
                    match written {
                        Ok(op) => {
                            let op = op.into_inner();
                            let graph = match op.result.and_then(|r| r.result) {
                                Some(pb::operation_result::Result::Provisioning(p)) => p.graph_id,
                                other => panic!("no provisioning result: {other:?}"),
                            };
                            seen.acknowledged.insert(op.operation_id, graph);
                            seen.successes.push(Instant::now());
                        }
                        Err(s) => seen.errors.push((s.code(), s.message().to_string())),
                    }
                    if let Err(s) = read {
                        seen.errors.push((s.code(), s.message().to_string()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let mut kills = Vec::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..KILLS {
        let ended = env.db.terminate_connections().await;
        let at = Instant::now();
        assert!(ended > 0, "the pipeline had connections to lose");
        kills.push((at, ended));
        // Writes succeed again by themselves, soon.
        eventually(RESUME_WITHIN, || async {
            let seen = seen.lock().unwrap();
            seen.successes.iter().any(|t| *t > at).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let seen = Arc::try_unwrap(seen)
        .map_err(|_| "clients still hold the record")
        .unwrap()
        .into_inner()
        .unwrap();
    eprintln!(
        "{} kills ending {:?} connections; {} writes acknowledged; {} errors: {:?}",
        kills.len(),
        kills.iter().map(|(_, n)| n).collect::<Vec<_>>(),
        seen.acknowledged.len(),
        seen.errors.len(),
        seen.errors.iter().map(|(c, _)| *c).collect::<Vec<_>>()
    );
    for (code, message) in &seen.errors {
        assert!(
            matches!(code, Code::Unavailable | Code::Aborted),
            "a client saw {code:?}: {message}"
        );
    }
    assert!(seen.acknowledged.len() >= WRITERS * KILLS);

    // Every acknowledged write is there, and its operation finishes (those a kill
    // interrupted resume once their lease expires).
    let ops = server.operations("ops", Role::Admin).await;
    let mut graphs = server.provisioning("ops", Role::Admin).await;
    for (operation_id, graph_id) in &seen.acknowledged {
        let op = eventually(Duration::from_secs(30), || {
            let (ops, id) = (ops.clone(), operation_id.clone());
            async move {
                let mut ops = ops;
                let op = ops
                    .get_operation(pb::GetOperationRequest { operation_id: id })
                    .await
                    .ok()?
                    .into_inner();
                (op.status == pb::OperationStatus::Succeeded as i32
                    || op.status == pb::OperationStatus::Failed as i32)
                    .then_some(op)
            }
        })
        .await;
        assert_eq!(
            op.status,
            pb::OperationStatus::Succeeded as i32,
            "acknowledged operation {operation_id}: {op:#?}"
        );
        let graph = graphs
            .get_graph(pb::GetGraphRequest {
                graph_id: graph_id.clone(),
            })
            .await
            .expect("the graph of an acknowledged write")
            .into_inner();
        assert_eq!(graph.status, pb::GraphStatus::Active as i32);
    }
    server.stop().await;
}
