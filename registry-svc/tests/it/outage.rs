//! The database drops every connection while clients write (what a Postgres restart or a
//! failover does): clients see only retryable errors, writes resume by themselves, and
//! nothing acknowledged is lost.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing::TestDb};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::support::{alias_history, servable_run, set, start};

#[derive(Default)]
struct Seen {
    /// (request id, run id) of every acknowledged CreateRun.
    runs: Vec<(String, String)>,
    /// (alias, revision, run id) of every acknowledged SetAlias.
    aliases: Vec<(String, i64, String)>,
    /// Every error a client saw, and when.
    errors: Vec<(Instant, Code, String)>,
    /// When each call succeeded.
    successes: Vec<Instant>,
}

impl Seen {
    fn record<T>(&mut self, r: &Result<T, tonic::Status>) {
        match r {
            Ok(_) => self.successes.push(Instant::now()),
            Err(s) => self
                .errors
                .push((Instant::now(), s.code(), s.message().to_string())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_survive_every_database_connection_being_terminated() {
    let server = start(TestDb::postgres().await).await;
    let mut admin = server.client(Role::Admin).await;
    let targets = [
        servable_run(&mut admin, "a", &[]).await.run_id,
        servable_run(&mut admin, "b", &[]).await.run_id,
    ];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = CancellationToken::new();
    let mut clients = Vec::new();
    for w in 0..4 {
        let mut c = server.client(Role::Service).await;
        let (seen, stop, targets) = (seen.clone(), stop.clone(), targets.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.is_cancelled() {
                n += 1;
                let request_id = format!("w{w}-{n}");
                let created = c
                    .create_run(pb::CreateRunRequest {
                        request_id: request_id.clone(),
                        name: request_id.clone(),
                        model_type: "m".into(),
                        ..Default::default()
                    })
                    .await;
                let target = &targets[n % 2];
                let alias = format!("w{w}");
                let moved = c.set_alias(set(&alias, target, None)).await;
                let mut seen = seen.lock().unwrap();
                seen.record(&created);
                seen.record(&moved);
                if let Ok(run) = created {
                    seen.runs.push((request_id, run.into_inner().run_id));
                }
                if let Ok(a) = moved {
                    seen.aliases
                        .push((alias, a.get_ref().revision, target.clone()));
                }
            }
        }));
    }
    // A reader too: reads must fail as retryable as well.
    {
        let mut c = server.client(Role::User).await;
        let (seen, stop) = (seen.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let read = c
                    .get_alias(pb::GetAliasRequest {
                        alias: "w0".into(),
                        ..Default::default()
                    })
                    .await;
                // Before the first write lands the alias may not exist yet.
                if !matches!(&read, Err(s) if s.code() == Code::NotFound) {
                    seen.lock().unwrap().record(&read);
                }
                let listed = c
                    .list_runs(pb::ListRunsRequest {
                        page_size: 10,
                        ..Default::default()
                    })
                    .await;
                seen.lock().unwrap().record(&listed);
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut terminated = 0;
    let mut last_cut = Instant::now();
    for _ in 0..2 {
        last_cut = Instant::now();
        terminated += server.db.terminate_connections().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    for c in clients {
        c.await.unwrap();
    }

    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    let wrong: Vec<_> = seen
        .errors
        .iter()
        .filter(|(_, code, _)| !matches!(code, Code::Unavailable | Code::Aborted))
        .collect();
    assert!(
        wrong.is_empty(),
        "clients must see only UNAVAILABLE or ABORTED while connections are lost: {wrong:?}"
    );
    assert!(
        terminated > 0,
        "the service had database connections to end"
    );
    assert!(
        !seen.errors.is_empty(),
        "ending {terminated} connections under load failed no call: the test did not bite"
    );
    let recovered = seen
        .successes
        .iter()
        .filter(|t| **t > last_cut)
        .min()
        .expect("calls succeed again after the connections were ended");
    assert!(
        recovered.duration_since(last_cut) < Duration::from_secs(3),
        "writes resumed only {:?} after the last cut",
        recovered.duration_since(last_cut)
    );
    let last_error = seen.errors.iter().map(|(t, ..)| *t).max().unwrap();
    assert!(
        last_error.duration_since(last_cut) < Duration::from_secs(4),
        "errors went on {:?} after the last cut",
        last_error.duration_since(last_cut)
    );

    // Every acknowledged write is there.
    for (request_id, run_id) in &seen.runs {
        let run = admin
            .get_run(pb::GetRunRequest {
                run_id: run_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged run {run_id} is gone: {s:?}"))
            .into_inner();
        assert_eq!(&run.request_id, request_id);
    }
    for w in 0..4 {
        let alias = format!("w{w}");
        let history = alias_history(&mut admin, &alias).await;
        for (a, revision, run_id) in seen.aliases.iter().filter(|(a, ..)| *a == alias) {
            assert!(
                history
                    .iter()
                    .any(|e| e.revision == *revision && e.run_id == *run_id),
                "acknowledged revision {revision} of {a} is not in its history"
            );
        }
    }
    eprintln!(
        "{} runs and {} alias writes acknowledged; {} calls failed (all retryable) after {terminated} connections were ended",
        seen.runs.len(),
        seen.aliases.len(),
        seen.errors.len()
    );
    server.stop().await;
}
