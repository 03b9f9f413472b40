//! `ListRuns` filter expressions over real gRPC: random filters against the in-memory
//! evaluator on random runs (same runs, same order, across pages) on both backends; the
//! parser's round trip; hostile filters refused without effect; page tokens bound to
//! their filter.

use std::collections::BTreeMap;

use capstan_client::RegistryClient;
use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing::TestDb};
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};
use registry_svc::domain::runs::{
    filter::{self, Cmp, Field, Filter, Literal, Test},
    ModelRun, RunStatus,
};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::support::start;

capstan_server::test_on_both_backends!(
    sql_filters_agree_with_the_evaluator_across_pages,
    hostile_filters_are_refused_and_change_nothing,
    page_tokens_stay_bound_to_their_filter,
);

/// The values filters are drawn from. Narrow domains make conditions hit and miss alike.
struct Domain {
    keys: BoxedStrategy<String>,
    texts: BoxedStrategy<String>,
    numbers: BoxedStrategy<f64>,
    times: BoxedStrategy<i64>,
}

fn cmp() -> impl Strategy<Value = Cmp> + Clone {
    prop::sample::select(vec![Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge])
}

fn condition(d: &Domain) -> BoxedStrategy<Filter> {
    let text_field = prop_oneof![
        Just(Field::Name),
        Just(Field::ModelType),
        d.keys.clone().prop_map(Field::Tag),
        d.keys.clone().prop_map(Field::Param),
    ];
    let map_field = prop_oneof![
        d.keys.clone().prop_map(Field::Tag),
        d.keys.clone().prop_map(Field::Param),
        d.keys.clone().prop_map(Field::Metric),
    ];
    let statuses = prop::sample::select(RunStatus::ALL.to_vec());
    prop_oneof![
        (any::<bool>(), statuses).prop_map(|(eq, s)| Filter::cond(
            Field::Status,
            Test::Compare(if eq { Cmp::Eq } else { Cmp::Ne }, Literal::Status(s))
        )),
        (text_field.clone(), cmp(), d.texts.clone())
            .prop_map(|(f, c, s)| Filter::cond(f, Test::Compare(c, Literal::Text(s)))),
        (text_field.clone(), d.texts.clone()).prop_map(|(f, s)| Filter::cond(f, Test::Prefix(s))),
        (text_field, d.texts.clone()).prop_map(|(f, s)| Filter::cond(f, Test::Contains(s))),
        map_field.prop_map(|f| Filter::cond(f, Test::Present)),
        (d.keys.clone(), cmp(), d.numbers.clone()).prop_map(|(k, c, n)| Filter::cond(
            Field::Metric(k),
            Test::Compare(c, Literal::Number(n))
        )),
        (cmp(), d.times.clone())
            .prop_map(|(c, t)| Filter::cond(Field::CreateTime, Test::Compare(c, Literal::Time(t)))),
    ]
    .boxed()
}

/// Trees within the parser's limits: at most 27 conditions, nested at most 6 deep.
fn filters(d: &Domain) -> impl Strategy<Value = Filter> {
    condition(d).prop_recursive(3, 27, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..=3).prop_map(Filter::And),
            prop::collection::vec(inner.clone(), 2..=3).prop_map(Filter::Or),
            inner.prop_map(|f| Filter::Not(Box::new(f))),
        ]
    })
}

proptest! {
    #[test]
    fn printed_filters_parse_back_to_themselves(f in filters(&Domain {
        keys: "[a-z][a-z0-9_./-]{0,6}".boxed(),
        texts: ".{0,8}".boxed(),
        numbers: prop_oneof![-1e6f64..1e6, any::<f64>().prop_filter("finite", |n| n.is_finite())].boxed(),
        times: (0i64..4_102_444_800_000_000).boxed(),
    })) {
        let text = f.to_string();
        prop_assert_eq!(filter::parse(&text).unwrap(), Some(f), "{}", text);
    }
}

const NAMES: [&str; 5] = ["Alpha-1", "alpha-2", "beta", "b", "Alpha"];
const TEXTS: [&str; 8] = ["", "a", "A", "al", "Alpha", "b", "x", "7"];

/// A run as the evaluator sees it, from its wire form.
fn model_run(r: &pb::Run) -> ModelRun {
    let ts = r.create_time.unwrap_or_default();
    let status = match pb::RunStatus::try_from(r.status) {
        Ok(pb::RunStatus::Pending) => RunStatus::Pending,
        Ok(pb::RunStatus::Running) => RunStatus::Running,
        Ok(pb::RunStatus::Succeeded) => RunStatus::Succeeded,
        Ok(pb::RunStatus::Failed) => RunStatus::Failed,
        Ok(pb::RunStatus::Cancelled) => RunStatus::Cancelled,
        other => panic!("run {} has status {other:?}", r.run_id),
    };
    ModelRun {
        id: Uuid::parse_str(&r.run_id).unwrap(),
        namespace: r.namespace.clone(),
        created_by: r.created_by.clone(),
        updated_by: r.updated_by.clone(),
        request_id: None,
        name: r.name.clone(),
        model_type: r.model_type.clone(),
        params: r.params.clone().into_iter().collect(),
        tags: r.tags.clone().into_iter().collect(),
        metrics: r.metrics.clone().into_iter().collect(),
        status,
        status_message: String::new(),
        artifact: None,
        attachments: Default::default(),
        create_time: ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000,
        update_time: 0,
        heartbeat_time: 0,
        heartbeat_timeout_ms: 0,
        version: 0,
    }
}

fn opt_entry<V: Clone + std::fmt::Debug + 'static>(
    key: &'static str,
    values: Vec<V>,
) -> impl Strategy<Value = Option<(String, V)>> {
    prop::option::of(prop::sample::select(values).prop_map(move |v| (key.to_string(), v)))
}

/// Random runs: a few values per field, each map entry sometimes missing.
fn run_requests() -> impl Strategy<Value = Vec<(pb::CreateRunRequest, RunStatus)>> {
    let one = (
        prop::sample::select(NAMES.to_vec()),
        prop::sample::select(vec!["a", "b", "naive"]),
        opt_entry("team", vec!["x", "y", "", "Alpha"]),
        opt_entry("seed", vec!["1", "10", "7"]),
        opt_entry("season", vec!["7", "12", "a"]),
        opt_entry("wape", vec![0.0, 0.25, 0.5, -1.0]),
        opt_entry("loss", vec![1.0, 0.25, 3.5]),
        prop::sample::select(RunStatus::ALL.to_vec()),
    )
        .prop_map(|(name, mt, team, seed, season, wape, loss, status)| {
            let tags: BTreeMap<String, String> = [team, seed]
                .into_iter()
                .flatten()
                .map(|(k, v)| (k, v.to_string()))
                .collect();
            let req = pb::CreateRunRequest {
                name: name.into(),
                model_type: mt.into(),
                tags: tags.into_iter().collect(),
                params: season
                    .map(|(k, v)| (k, v.to_string()))
                    .into_iter()
                    .collect(),
                metrics: [wape, loss].into_iter().flatten().collect(),
                ..Default::default()
            };
            (req, status)
        });
    prop::collection::vec(one, 30..=45)
}

async fn create(c: &mut RegistryClient, req: pb::CreateRunRequest, status: RunStatus) {
    let run = c.create_run(req).await.unwrap().into_inner();
    if status != RunStatus::Pending {
        let s = |s: pb::RunStatus| s as i32;
        let wire = match status {
            RunStatus::Running => s(pb::RunStatus::Running),
            RunStatus::Succeeded => s(pb::RunStatus::Succeeded),
            RunStatus::Failed => s(pb::RunStatus::Failed),
            _ => s(pb::RunStatus::Cancelled),
        };
        c.update_run(pb::UpdateRunRequest {
            run: Some(pb::Run {
                run_id: run.run_id,
                status: wire,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["status".into()],
            }),
        })
        .await
        .unwrap();
    }
}

/// Every page of a listing, following its tokens.
async fn page_all(c: &mut RegistryClient, mut req: pb::ListRunsRequest) -> Vec<pb::Run> {
    let mut out = Vec::new();
    loop {
        let resp = c.list_runs(req.clone()).await.unwrap().into_inner();
        assert!(
            resp.runs.len() <= req.page_size as usize,
            "the page size holds"
        );
        out.extend(resp.runs);
        if resp.next_page_token.is_empty() {
            return out;
        }
        req.page_token = resp.next_page_token;
    }
}

/// What the listing must return: the matching runs in the order's key, then by id.
fn expected(runs: &[ModelRun], f: &Filter, order: &str) -> Vec<Uuid> {
    let (key, desc) = match order.split_once(' ') {
        Some((k, _)) => (k, true),
        None => (order, false),
    };
    let metric = key.strip_prefix("metrics.");
    let mut m: Vec<&ModelRun> = runs
        .iter()
        .filter(|r| f.matches(r))
        .filter(|r| metric.is_none_or(|k| r.metrics.contains_key(k)))
        .collect();
    m.sort_by(|a, b| {
        let by_key = match metric {
            Some(k) => a.metrics[k].partial_cmp(&b.metrics[k]).unwrap(),
            None => a.create_time.cmp(&b.create_time),
        };
        by_key.then(a.id.cmp(&b.id))
    });
    if desc {
        m.reverse();
    }
    m.iter().map(|r| r.id).collect()
}

async fn sql_filters_agree_with_the_evaluator_across_pages(db: TestDb) {
    let server = start(db).await;
    let mut c = server.client(Role::Admin).await;
    let mut runner = TestRunner::deterministic();
    let requests = run_requests().new_tree(&mut runner).unwrap().current();
    for (req, status) in requests {
        create(&mut c, req, status).await;
    }
    let all = page_all(
        &mut c,
        pb::ListRunsRequest {
            page_size: 1000,
            ..Default::default()
        },
    )
    .await;
    let runs: Vec<ModelRun> = all.iter().map(model_run).collect();
    let mut times: Vec<i64> = runs.iter().map(|r| r.create_time).collect();
    times.extend(runs.iter().map(|r| r.create_time + 1));
    let domain = Domain {
        keys: prop::sample::select(vec!["team", "seed", "season", "wape", "loss"])
            .prop_map(str::to_string)
            .boxed(),
        texts: prop::sample::select(TEXTS.to_vec())
            .prop_map(str::to_string)
            .boxed(),
        numbers: prop::sample::select(vec![-1.0, 0.0, 0.25, 0.3, 0.5, 1.0, 3.5]).boxed(),
        times: prop::sample::select(times).boxed(),
    };
    let orders = prop::sample::select(vec![
        "create_time",
        "create_time desc",
        "metrics.wape",
        "metrics.wape desc",
        "metrics.loss desc",
    ]);
    let case = (filters(&domain), orders, 1i32..=7);
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let nonempty = std::cell::Cell::new(0);
    let outcome = runner.run(&case, |(f, order, page_size)| {
        let want = expected(&runs, &f, order);
        nonempty.set(nonempty.get() + usize::from(!want.is_empty()));
        let got = tokio::task::block_in_place(|| {
            handle.block_on(page_all(
                &mut c.clone(),
                pb::ListRunsRequest {
                    filter: f.to_string(),
                    order_by: order.into(),
                    page_size,
                    ..Default::default()
                },
            ))
        });
        let got: Vec<Uuid> = got
            .iter()
            .map(|r| Uuid::parse_str(&r.run_id).unwrap())
            .collect();
        prop_assert_eq!(
            got,
            want,
            "filter {} order {} pages of {}",
            f,
            order,
            page_size
        );
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    assert!(
        nonempty.get() > 20,
        "the random filters hit too rarely to test much: {} of 96",
        nonempty.get()
    );
}

fn snapshot_request() -> pb::ListRunsRequest {
    pb::ListRunsRequest {
        page_size: 1000,
        order_by: "create_time".into(),
        ..Default::default()
    }
}

async fn hostile_filters_are_refused_and_change_nothing(db: TestDb) {
    let server = start(db).await;
    let mut c = server.client(Role::Admin).await;
    for i in 0..3 {
        c.create_run(pb::CreateRunRequest {
            name: format!("run-{i}"),
            model_type: "a".into(),
            tags: [("team".to_string(), "x".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let before = page_all(&mut c, snapshot_request()).await;
    let hostile = [
        "name = x; DROP TABLE runs".to_string(),
        "1 = 1 OR status = RUNNING".into(),
        "name = 'x' -- comment".into(),
        "tags.team = x) OR (1=1".into(),
        "tags.team = x UNION SELECT * FROM run_tags".into(),
        "tags.team = \"x\" OR tags.\"a'; DELETE FROM runs; --\" = 1".into(),
        format!("{}tags.team = x{}", "(".repeat(1000), ")".repeat(1000)),
        "NOT ".repeat(100) + "tags.team = x",
        format!("name = \"{}\"", "x".repeat(100_000)),
        "tags.team = x AND ".repeat(100) + "tags.team = x",
        "status = RUNNING AND".into(),
    ];
    for f in hostile {
        let e = c
            .list_runs(pb::ListRunsRequest {
                filter: f.clone(),
                ..Default::default()
            })
            .await
            .expect_err(&f);
        assert_eq!(e.code(), Code::InvalidArgument, "{f:.80}: {e:?}");
        let details = e.get_details_bad_request().expect("BadRequest details");
        assert_eq!(details.field_violations[0].field, "filter", "{f:.80}");
        assert!(
            e.message().len() < 500,
            "the message stays short: {}",
            e.message()
        );
    }
    // SQL inside a quoted value is a value: it matches no run and runs nothing.
    let quoted = c
        .list_runs(pb::ListRunsRequest {
            filter:
                r#"name = "x'; DROP TABLE runs; --" OR tags.team = "'; DELETE FROM run_tags; --""#
                    .into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(quoted.runs.is_empty());
    assert_eq!(page_all(&mut c, snapshot_request()).await, before);
    let e = c
        .list_runs(pb::ListRunsRequest {
            filter: "tags.team = ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let details = e.get_details_bad_request().expect("BadRequest details");
    assert_eq!(
        details.field_violations[0].description,
        "at column 13: expected a value, found the end of the filter"
    );
}

async fn page_tokens_stay_bound_to_their_filter(db: TestDb) {
    let server = start(db).await;
    let mut c = server.client(Role::Admin).await;
    for i in 0..6 {
        c.create_run(pb::CreateRunRequest {
            name: format!("run-{i}"),
            model_type: "a".into(),
            tags: [("team".to_string(), "x".to_string())].into(),
            metrics: [("wape".to_string(), f64::from(i) / 10.0)].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let first = |filter: &str| pb::ListRunsRequest {
        filter: filter.into(),
        order_by: "metrics.wape".into(),
        page_size: 2,
        ..Default::default()
    };
    let page = c
        .list_runs(first("tags.team = x AND metrics.wape < 0.5"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.runs.len(), 2);
    // The same filter spelled otherwise is the same filter.
    let respelled = pb::ListRunsRequest {
        page_token: page.next_page_token.clone(),
        ..first("(tags.team=\"x\")   metrics.wape<0.5")
    };
    let next = c.list_runs(respelled).await.unwrap().into_inner();
    assert_eq!(next.runs[0].metrics["wape"], 0.2);
    for other in ["tags.team = x", "tags.team = x AND metrics.wape < 0.4", ""] {
        let e = c
            .list_runs(pb::ListRunsRequest {
                page_token: page.next_page_token.clone(),
                ..first(other)
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{other}");
        assert!(e.message().contains("page_token"), "{other}: {e:?}");
    }
}
