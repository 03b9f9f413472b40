//! A client given several registry addresses spreads calls over them and keeps working
//! when one of them goes away (HTTP/2 would otherwise pin it to one server).

use capstan_client::registry_client;
use capstan_proto::registry::v1::{self as pb};
use capstan_server::testing::TestDb;

use crate::support::start_with;

async fn count_runs(url: &str) -> usize {
    let mut c = registry_client(url, None, 4 << 20).await.unwrap();
    c.list_runs(pb::ListRunsRequest {
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .runs
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_client_spreads_calls_and_survives_a_lost_server() {
    let a = start_with(TestDb::sqlite(), &["--auth", "disabled"]).await;
    let b = start_with(TestDb::sqlite(), &["--auth", "disabled"]).await;
    let both = format!("{},{}", a.url, b.url);
    let mut c = registry_client(&both, None, 4 << 20).await.unwrap();
    let create = |i: usize| pb::CreateRunRequest {
        name: format!("r{i}"),
        model_type: "m".into(),
        ..Default::default()
    };
    for i in 0..60 {
        c.create_run(create(i)).await.unwrap();
    }
    let (on_a, on_b) = (count_runs(&a.url).await, count_runs(&b.url).await);
    assert_eq!(on_a + on_b, 60);
    assert!(
        on_a > 0 && on_b > 0,
        "calls were not spread: {on_a} on A, {on_b} on B"
    );

    let b_url = b.url.clone();
    a.stop().await;
    let mut failures = 0;
    for i in 60..100 {
        let mut tries = 0;
        loop {
            match c.create_run(create(i)).await {
                Ok(_) => break,
                // Until the next probe (1 s) evicts the lost server, a call may still meet it.
                Err(s) if s.code() == tonic::Code::Unavailable && tries < 20 => {
                    failures += 1;
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(s) => panic!("call {i} failed after the loss of one server: {s:?}"),
            }
        }
    }
    assert!(
        failures <= 20,
        "{failures} calls failed after one server stopped"
    );
    assert_eq!(
        count_runs(&b_url).await,
        on_b + 40,
        "the survivor took every later call"
    );
    b.stop().await;
}
