//! Table-driven: malformed requests across every RPC get the right status (never
//! INTERNAL) and write nothing.

use std::{future::Future, pin::Pin};

use capstan_client::RegistryClient;
use capstan_proto::registry::v1::{self as pb};
use capstan_server::{auth::Role, testing::TestDb};
use futures::StreamExt;
use tonic::{Code, Status};

use crate::support::{servable_run, start};

capstan_server::test_on_both_backends!(malformed_requests_get_clear_codes_and_change_nothing);

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

fn ok<T>(r: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    r.map(|_| ())
}

fn header(run_id: &str) -> pb::ArtifactHeader {
    pb::ArtifactHeader {
        run_id: run_id.into(),
        name: "m.json".into(),
        ..Default::default()
    }
}

fn upload_msgs(h: Option<pb::ArtifactHeader>, chunks: &[&[u8]]) -> Vec<pb::UploadArtifactRequest> {
    use pb::upload_artifact_request::Payload;
    let mut v: Vec<_> = h
        .into_iter()
        .map(|h| pb::UploadArtifactRequest {
            payload: Some(Payload::Header(h)),
        })
        .collect();
    v.extend(chunks.iter().map(|c| pb::UploadArtifactRequest {
        payload: Some(Payload::Chunk(c.to_vec().into())),
    }));
    v
}

/// Everything a request could have written.
async fn snapshot(c: &mut RegistryClient) -> String {
    let runs = c
        .list_runs(pb::ListRunsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let aliases = c
        .list_aliases(pb::ListAliasesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut history = Vec::new();
    for a in &aliases.aliases {
        history.push(
            c.list_alias_history(pb::ListAliasHistoryRequest {
                alias: a.alias.clone(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
        );
    }
    format!("{runs:?}\n{aliases:?}\n{history:?}")
}

async fn malformed_requests_get_clear_codes_and_change_nothing(db: TestDb) {
    {
        let server = start(db).await;
        let mut admin = server.client(Role::Admin).await;
        let ok_run = servable_run(&mut admin, "ok", &[("wape", 0.1)]).await;
        let worse = servable_run(&mut admin, "worse", &[("wape", 0.9)]).await;
        let no_metric = servable_run(&mut admin, "nometric", &[]).await;
        let running = admin
            .create_run(pb::CreateRunRequest {
                name: "running".into(),
                model_type: "m".into(),
                status: pb::RunStatus::Running as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let failed = admin
            .create_run(pb::CreateRunRequest {
                name: "failed".into(),
                model_type: "m".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        admin
            .update_run(pb::UpdateRunRequest {
                run: Some(pb::Run {
                    run_id: failed.run_id.clone(),
                    status: pb::RunStatus::Failed as i32,
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap();
        admin
            .set_alias(pb::SetAliasRequest {
                alias: "prod".into(),
                run_id: ok_run.run_id.clone(),
                expected_revision: Some(0),
                ..Default::default()
            })
            .await
            .unwrap();
        let forged_from_other_query = admin
            .list_runs(pb::ListRunsRequest {
                page_size: 1,
                model_type: "seasonal_naive".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .next_page_token;
        assert!(!forged_from_other_query.is_empty());
        let before = snapshot(&mut admin).await;

        let unknown = uuid::Uuid::new_v4().to_string();
        let anon = server.anonymous().await;
        let user = server.client(Role::User).await;
        let bad_token = server.with_token("not.a.jwt").await;
        let c = admin.clone();
        let run_with = |f: &dyn Fn(&mut pb::Run)| {
            let mut r = pb::Run {
                run_id: running.run_id.clone(),
                ..Default::default()
            };
            f(&mut r);
            pb::UpdateRunRequest {
                run: Some(r),
                update_mask: None,
            }
        };
        let create = |f: &dyn Fn(&mut pb::CreateRunRequest)| {
            let mut r = pb::CreateRunRequest {
                name: "n".into(),
                model_type: "m".into(),
                ..Default::default()
            };
            f(&mut r);
            r
        };
        let set = |alias: &str, run: &str, exp: Option<i64>| pb::SetAliasRequest {
            alias: alias.into(),
            run_id: run.into(),
            expected_revision: exp,
            ..Default::default()
        };
        let promote = |run: &str, metric: &str| pb::PromoteRunRequest {
            alias: "prod".into(),
            run_id: run.into(),
            metric: metric.into(),
            ..Default::default()
        };
        let sha_of_hello = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

        let mut cases: Vec<(&str, Code, Call)> = Vec::new();
        macro_rules! case {
            ($name:expr, $code:ident, |$c:ident| $body:expr) => {{
                let mut $c = c.clone();
                cases.push(($name, Code::$code, Box::pin(async move { ok($body.await) })));
            }};
        }
        // CreateRun
        case!("create: empty name", InvalidArgument, |c| c
            .create_run(create(&|r| r.name.clear())));
        case!("create: 300-char name", InvalidArgument, |c| c
            .create_run(create(&|r| r.name = "x".repeat(300))));
        case!("create: control char in name", InvalidArgument, |c| c
            .create_run(create(&|r| r.name = "a\u{7}b".into())));
        case!("create: model_type with capitals", InvalidArgument, |c| c
            .create_run(create(&|r| r.model_type = "Bad-Type".into())));
        case!("create: empty model_type", InvalidArgument, |c| c
            .create_run(create(&|r| r.model_type.clear())));
        case!("create: starts SUCCEEDED", InvalidArgument, |c| c
            .create_run(create(
                &|r| r.status = pb::RunStatus::Succeeded as i32
            )));
        case!("create: status 99", InvalidArgument, |c| c
            .create_run(create(&|r| r.status = 99)));
        case!("create: NaN metric", InvalidArgument, |c| c.create_run(
            create(&|r| {
                r.metrics.insert("wape".into(), f64::NAN);
            })
        ));
        case!("create: infinite metric", InvalidArgument, |c| c
            .create_run(create(&|r| {
                r.metrics.insert("wape".into(), f64::INFINITY);
            })));
        case!("create: bad tag key", InvalidArgument, |c| c.create_run(
            create(&|r| {
                r.tags.insert("bad key!".into(), "v".into());
            })
        ));
        case!("create: 65 params", InvalidArgument, |c| c.create_run(
            create(&|r| {
                for i in 0..65 {
                    r.params.insert(format!("p{i}"), "v".into());
                }
            })
        ));
        case!("create: request_id with spaces", InvalidArgument, |c| c
            .create_run(create(&|r| r.request_id = "a b".into())));
        case!("create: negative heartbeat", InvalidArgument, |c| c
            .create_run(create(&|r| r.heartbeat_timeout =
                Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0
                }))));
        case!("create: heartbeat over 7 days", InvalidArgument, |c| c
            .create_run(create(&|r| r.heartbeat_timeout =
                Some(prost_types::Duration {
                    seconds: 8 * 86400,
                    nanos: 0
                }))));
        {
            let mut a = anon.clone();
            cases.push((
                "create: no token",
                Code::Unauthenticated,
                Box::pin(async move { ok(a.create_run(pb::CreateRunRequest::default()).await) }),
            ));
            let mut b = bad_token.clone();
            cases.push((
                "create: forged token",
                Code::Unauthenticated,
                Box::pin(async move { ok(b.create_run(pb::CreateRunRequest::default()).await) }),
            ));
            let mut u = user.clone();
            let req = create(&|_| {});
            cases.push((
                "create: user role",
                Code::PermissionDenied,
                Box::pin(async move { ok(u.create_run(req).await) }),
            ));
            let mut u = user.clone();
            let req = set("prod", &worse.run_id, None);
            cases.push((
                "set alias: user role",
                Code::PermissionDenied,
                Box::pin(async move { ok(u.set_alias(req).await) }),
            ));
            let mut a = anon.clone();
            cases.push((
                "get alias: no token",
                Code::Unauthenticated,
                Box::pin(async move {
                    ok(a.get_alias(pb::GetAliasRequest {
                        alias: "prod".into(),
                        ..Default::default()
                    })
                    .await)
                }),
            ));
        }
        // GetRun
        case!("get: not a uuid", InvalidArgument, |c| c.get_run(
            pb::GetRunRequest {
                run_id: "not-a-uuid".into(),
                ..Default::default()
            }
        ));
        case!("get: empty id", InvalidArgument, |c| c.get_run(
            pb::GetRunRequest {
                run_id: String::new(),
                ..Default::default()
            }
        ));
        let u2 = unknown.clone();
        case!("get: unknown run", NotFound, |c| c.get_run(
            pb::GetRunRequest {
                run_id: u2.clone(),
                ..Default::default()
            }
        ));
        // ListRuns
        case!("list: negative page_size", InvalidArgument, |c| c
            .list_runs(pb::ListRunsRequest {
                page_size: -1,
                ..Default::default()
            }));
        case!("list: garbage token", InvalidArgument, |c| c.list_runs(
            pb::ListRunsRequest {
                page_token: "abc".into(),
                ..Default::default()
            }
        ));
        case!("list: edited token", InvalidArgument, |c| c.list_runs(
            pb::ListRunsRequest {
                page_token: "eyJDcmVhdGVUaW1lIjpbMSwiYSJdfQ.0011223344556677".into(),
                ..Default::default()
            }
        ));
        let tok = forged_from_other_query.clone();
        case!("list: token from other filters", InvalidArgument, |c| c
            .list_runs(pb::ListRunsRequest {
                page_token: tok.clone(),
                model_type: "m".into(),
                ..Default::default()
            }));
        case!("list: bad order_by", InvalidArgument, |c| c.list_runs(
            pb::ListRunsRequest {
                order_by: "bogus".into(),
                ..Default::default()
            }
        ));
        case!("list: bad metric in order_by", InvalidArgument, |c| c
            .list_runs(pb::ListRunsRequest {
                order_by: "metrics.bad key".into(),
                ..Default::default()
            }));
        case!("list: status 42", InvalidArgument, |c| c.list_runs(
            pb::ListRunsRequest {
                status: 42,
                ..Default::default()
            }
        ));
        case!("list: bad model_type filter", InvalidArgument, |c| c
            .list_runs(pb::ListRunsRequest {
                model_type: "UPPER".into(),
                ..Default::default()
            }));
        // UpdateRun
        case!("update: no run", InvalidArgument, |c| c
            .update_run(pb::UpdateRunRequest::default()));
        case!("update: bad run id", InvalidArgument, |c| c.update_run(
            pb::UpdateRunRequest {
                run: Some(pb::Run {
                    run_id: "x".into(),
                    name: "n".into(),
                    ..Default::default()
                }),
                update_mask: None
            }
        ));
        let u3 = unknown.clone();
        case!("update: unknown run", NotFound, |c| c.update_run(
            pb::UpdateRunRequest {
                run: Some(pb::Run {
                    run_id: u3.clone(),
                    name: "n".into(),
                    ..Default::default()
                }),
                update_mask: None
            }
        ));
        let r = run_with(&|r| r.status = pb::RunStatus::Pending as i32);
        case!("update: RUNNING back to PENDING", FailedPrecondition, |c| c
            .update_run(r.clone()));
        let fid = failed.run_id.clone();
        case!("update: FAILED to SUCCEEDED", FailedPrecondition, |c| c
            .update_run(pb::UpdateRunRequest {
                run: Some(pb::Run {
                    run_id: fid.clone(),
                    status: pb::RunStatus::Succeeded as i32,
                    ..Default::default()
                }),
                update_mask: None
            }));
        let fid = failed.run_id.clone();
        case!(
            "update: metrics of a terminal run",
            FailedPrecondition,
            |c| c.update_run(pb::UpdateRunRequest {
                run: Some(pb::Run {
                    run_id: fid.clone(),
                    metrics: [("wape".to_string(), 0.0)].into(),
                    ..Default::default()
                }),
                update_mask: None
            })
        );
        let r = run_with(&|r| {
            r.artifact_uri = "demo/safer-promote-placeholder.joblib".into();
            r.artifact_sha256 = "0".repeat(64);
            r.artifact_size_bytes = 1;
        });
        case!("update: placeholder artifact_uri", InvalidArgument, |c| c
            .update_run(r.clone()));
        let r = run_with(&|r| {
            r.artifact_uri = "demo/m-model_0123456789ab.joblib".into();
            r.artifact_sha256 = "xyz".into();
            r.artifact_size_bytes = 1;
        });
        case!("update: artifact sha not hex", InvalidArgument, |c| c
            .update_run(r.clone()));
        let r = run_with(&|r| {
            r.artifact_uri = "demo/m-model_0123456789ab.joblib".into();
            r.artifact_sha256 = "0".repeat(64);
            r.artifact_size_bytes = -5;
        });
        case!("update: negative artifact size", InvalidArgument, |c| c
            .update_run(r.clone()));
        let r = run_with(&|r| {
            r.artifact_uri = "demo/other-model_0123456789ab.joblib".into();
            r.artifact_sha256 = "0".repeat(64);
            r.artifact_size_bytes = 5;
        });
        case!(
            "update: artifact model_type differs",
            InvalidArgument,
            |c| c.update_run(r.clone())
        );
        let r = run_with(&|r| {
            r.etag = "999".into();
            r.name = "x".into();
        });
        case!("update: stale etag", Aborted, |c| c.update_run(r.clone()));
        let mut r = run_with(&|r| r.name = "x".into());
        r.update_mask = Some(prost_types::FieldMask {
            paths: vec!["bogus".into()],
        });
        case!("update: unknown mask path", InvalidArgument, |c| c
            .update_run(r.clone()));
        let r = run_with(&|_| {});
        case!("update: nothing to update", InvalidArgument, |c| c
            .update_run(r.clone()));
        let mut r = run_with(&|_| {});
        r.update_mask = Some(prost_types::FieldMask {
            paths: vec!["status".into()],
        });
        case!("update: UNSPECIFIED status in mask", InvalidArgument, |c| c
            .update_run(r.clone()));
        // UploadArtifact
        let rid = running.run_id.clone();
        case!("upload: chunk before header", InvalidArgument, |c| c
            .upload_artifact(tokio_stream::iter(upload_msgs(
                None,
                &[b"hello"]
            ))));
        case!("upload: bad run id", InvalidArgument, |c| c
            .upload_artifact(tokio_stream::iter(upload_msgs(
                Some(header("nope")),
                &[b"hello"]
            ))));
        let u4 = unknown.clone();
        case!("upload: unknown run", NotFound, |c| c.upload_artifact(
            tokio_stream::iter(upload_msgs(Some(header(&u4)), &[b"hello"]))
        ));
        let h = pb::ArtifactHeader {
            expected_size: Some(-1),
            ..header(&rid)
        };
        case!("upload: negative expected_size", InvalidArgument, |c| c
            .upload_artifact(tokio_stream::iter(upload_msgs(
                Some(h.clone()),
                &[b"hello"]
            ))));
        let h = pb::ArtifactHeader {
            expected_sha256: "f".repeat(64),
            ..header(&rid)
        };
        case!("upload: hash mismatch", DataLoss, |c| c.upload_artifact(
            tokio_stream::iter(upload_msgs(Some(h.clone()), &[b"hello"]))
        ));
        let h = pb::ArtifactHeader {
            expected_size: Some(10),
            expected_sha256: sha_of_hello.into(),
            ..header(&rid)
        };
        case!("upload: size mismatch (short)", InvalidArgument, |c| c
            .upload_artifact(tokio_stream::iter(upload_msgs(
                Some(h.clone()),
                &[b"hello"]
            ))));
        let h = pb::ArtifactHeader {
            expected_size: Some(3),
            ..header(&rid)
        };
        case!("upload: size mismatch (long)", InvalidArgument, |c| c
            .upload_artifact(tokio_stream::iter(upload_msgs(
                Some(h.clone()),
                &[b"hel", b"lo"]
            ))));
        let fid = failed.run_id.clone();
        case!("upload: terminal run", FailedPrecondition, |c| c
            .upload_artifact(tokio_stream::iter(upload_msgs(
                Some(header(&fid)),
                &[b"hello"]
            ))));
        let h = pb::ArtifactHeader {
            name: "../etc/passwd".into(),
            ..header(&rid)
        };
        case!("upload: path in file name", InvalidArgument, |c| c
            .upload_artifact(tokio_stream::iter(upload_msgs(
                Some(h.clone()),
                &[b"hello"]
            ))));
        let h = pb::ArtifactHeader {
            expected_sha256: "XYZ".into(),
            ..header(&rid)
        };
        case!("upload: expected_sha256 not hex", InvalidArgument, |c| c
            .upload_artifact(tokio_stream::iter(upload_msgs(
                Some(h.clone()),
                &[b"hello"]
            ))));
        let h = pb::ArtifactHeader {
            namespace: "Bad Namespace".into(),
            ..header(&rid)
        };
        case!("upload: bad namespace", InvalidArgument, |c| c
            .upload_artifact(tokio_stream::iter(upload_msgs(
                Some(h.clone()),
                &[b"hello"]
            ))));
        let h = header(&rid);
        case!("upload: second header", InvalidArgument, |c| c
            .upload_artifact(tokio_stream::iter(
                upload_msgs(Some(h.clone()), &[])
                    .into_iter()
                    .chain(upload_msgs(Some(h.clone()), &[]))
                    .collect::<Vec<_>>()
            )));
        // DownloadArtifact
        case!("download: bad id", InvalidArgument, |c| c
            .download_artifact(pb::DownloadArtifactRequest {
                run_id: "1234".into(),
                ..Default::default()
            }));
        let rid2 = running.run_id.clone();
        case!("download: run without artifact", NotFound, |c| c
            .download_artifact(pb::DownloadArtifactRequest {
                run_id: rid2.clone(),
                ..Default::default()
            }));
        // SetAlias
        let okid = ok_run.run_id.clone();
        case!("set: alias with space", InvalidArgument, |c| c
            .set_alias(set("Bad Alias", &okid, None)));
        let okid = ok_run.run_id.clone();
        case!("set: 100-char alias", InvalidArgument, |c| c
            .set_alias(set(&"a".repeat(100), &okid, None)));
        let rid3 = running.run_id.clone();
        case!("set: RUNNING run", FailedPrecondition, |c| c
            .set_alias(set("prod", &rid3, None)));
        let fid = failed.run_id.clone();
        case!("set: FAILED run", FailedPrecondition, |c| c
            .set_alias(set("prod", &fid, None)));
        let wid = worse.run_id.clone();
        case!("set: stale expected_revision", Aborted, |c| c
            .set_alias(set("prod", &wid, Some(5))));
        let wid = worse.run_id.clone();
        case!("set: expected 0 but exists", Aborted, |c| c.set_alias(set(
            "prod",
            &wid,
            Some(0)
        )));
        let wid = worse.run_id.clone();
        case!("set: negative expected_revision", InvalidArgument, |c| c
            .set_alias(set("prod", &wid, Some(-1))));
        let u5 = unknown.clone();
        case!("set: unknown run", NotFound, |c| c
            .set_alias(set("prod", &u5, None)));
        let wid = worse.run_id.clone();
        case!("set: 2000-char description", InvalidArgument, |c| c
            .set_alias(pb::SetAliasRequest {
                description: "d".repeat(2000),
                ..set("prod", &wid, None)
            }));
        let wid = worse.run_id.clone();
        case!("set: new alias with stale revision", Aborted, |c| c
            .set_alias(set("fresh", &wid, Some(3))));
        // GetAlias, ListAliases, DeleteAlias, ListAliasHistory, RollbackAlias
        case!("get alias: unknown", NotFound, |c| c.get_alias(
            pb::GetAliasRequest {
                alias: "nope".into(),
                ..Default::default()
            }
        ));
        case!("get alias: invalid name", InvalidArgument, |c| c.get_alias(
            pb::GetAliasRequest {
                alias: "../x".into(),
                ..Default::default()
            }
        ));
        case!("get alias: namespace with a slash", InvalidArgument, |c| c
            .get_alias(pb::GetAliasRequest {
                alias: "x".into(),
                namespace: "team/a".into(),
            }));
        case!("create run: upper-case namespace", InvalidArgument, |c| c
            .create_run(pb::CreateRunRequest {
                namespace: "Team".into(),
                name: "r".into(),
                model_type: "m".into(),
                ..Default::default()
            }));
        case!("list aliases: negative page_size", InvalidArgument, |c| c
            .list_aliases(pb::ListAliasesRequest {
                page_size: -5,
                ..Default::default()
            }));
        case!("list aliases: forged token", InvalidArgument, |c| c
            .list_aliases(pb::ListAliasesRequest {
                page_token: "zzz.123".into(),
                ..Default::default()
            }));
        case!("delete alias: unknown", NotFound, |c| c.delete_alias(
            pb::DeleteAliasRequest {
                alias: "nope".into(),
                ..Default::default()
            }
        ));
        case!("delete alias: stale revision", Aborted, |c| c.delete_alias(
            pb::DeleteAliasRequest {
                alias: "prod".into(),
                expected_revision: Some(7),
                ..Default::default()
            }
        ));
        case!("history: unknown alias", NotFound, |c| c
            .list_alias_history(pb::ListAliasHistoryRequest {
                alias: "nope".into(),
                ..Default::default()
            }));
        case!("history: negative page_size", InvalidArgument, |c| c
            .list_alias_history(pb::ListAliasHistoryRequest {
                alias: "prod".into(),
                page_size: -1,
                ..Default::default()
            }));
        case!("rollback: revision 0", InvalidArgument, |c| c
            .rollback_alias(pb::RollbackAliasRequest {
                alias: "prod".into(),
                to_revision: 0,
                ..Default::default()
            }));
        case!("rollback: unknown revision", NotFound, |c| c
            .rollback_alias(pb::RollbackAliasRequest {
                alias: "prod".into(),
                to_revision: 99,
                ..Default::default()
            }));
        case!("rollback: stale expected", Aborted, |c| c.rollback_alias(
            pb::RollbackAliasRequest {
                alias: "prod".into(),
                to_revision: 1,
                expected_revision: Some(9),
                ..Default::default()
            }
        ));
        // PromoteRun
        let wid = worse.run_id.clone();
        case!("promote: worse challenger", FailedPrecondition, |c| c
            .promote_run(promote(&wid, "wape")));
        let wid = worse.run_id.clone();
        case!("promote: empty metric", InvalidArgument, |c| c
            .promote_run(promote(&wid, "")));
        let nid = no_metric.run_id.clone();
        case!(
            "promote: challenger lacks metric",
            FailedPrecondition,
            |c| c.promote_run(promote(&nid, "wape"))
        );
        let rid4 = running.run_id.clone();
        case!("promote: RUNNING challenger", FailedPrecondition, |c| c
            .promote_run(promote(&rid4, "wape")));
        case!("promote: bad run id", InvalidArgument, |c| c
            .promote_run(promote("zz", "wape")));
        let wid = worse.run_id.clone();
        case!(
            "promote: dry run of worse still refused",
            FailedPrecondition,
            |c| c.promote_run(pb::PromoteRunRequest {
                dry_run: true,
                ..promote(&wid, "wape")
            })
        );
        // WatchAliases
        case!("watch: invalid alias", InvalidArgument, |c| c
            .watch_aliases(pb::WatchAliasesRequest {
                aliases: vec!["Bad!".into()],
                ..Default::default()
            }));
        case!("watch: too many aliases", InvalidArgument, |c| c
            .watch_aliases(pb::WatchAliasesRequest {
                aliases: (0..101).map(|i| format!("a{i}")).collect(),
                ..Default::default()
            }));

        assert!(cases.len() >= 50, "only {} cases", cases.len());
        let total = cases.len();
        let mut failures = Vec::new();
        for (name, want, call) in cases {
            match call.await {
                Ok(()) => failures.push(format!("{name}: succeeded, expected {want:?}")),
                Err(s) => {
                    assert_ne!(
                        s.code(),
                        Code::Internal,
                        "{name}: INTERNAL: {}",
                        s.message()
                    );
                    assert!(!s.message().is_empty(), "{name}: empty message");
                    if s.code() != want {
                        failures.push(format!(
                            "{name}: got {:?} ({}), expected {want:?}",
                            s.code(),
                            s.message()
                        ));
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {total} cases wrong:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert_eq!(
            snapshot(&mut admin).await,
            before,
            "a refused request wrote something"
        );
        let staging = server.db.data_dir().join("artifacts/staging");
        assert_eq!(
            std::fs::read_dir(&staging).unwrap().count(),
            0,
            "refused uploads left staged blobs"
        );
        let mut w = admin
            .watch_aliases(pb::WatchAliasesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(
            w.next().await.is_some(),
            "watching all aliases streams the snapshot"
        );
        eprintln!("{total} malformed requests refused with the expected codes");
        server.stop().await;
    }
}
