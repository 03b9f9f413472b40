//! Aliases, their history and watch events as protobuf messages.

use capstan_proto::registry::v1 as pb;

use super::runs::timestamp;
use crate::domain::aliases::{Alias, AliasAction, AliasEvent, AliasEventKind, AliasHistoryEntry};

pub fn alias_to_pb(a: Alias) -> pb::Alias {
    pb::Alias {
        namespace: a.namespace,
        alias: a.alias,
        run_id: a.run_id.to_string(),
        description: a.description,
        revision: a.revision,
        update_time: timestamp(a.update_time),
        updated_by: a.updated_by,
    }
}

fn action_to_pb(a: AliasAction) -> pb::AliasAction {
    match a {
        AliasAction::Set => pb::AliasAction::Set,
        AliasAction::Rollback => pb::AliasAction::Rollback,
        AliasAction::Promote => pb::AliasAction::Promote,
        AliasAction::Delete => pb::AliasAction::Delete,
    }
}

pub fn history_to_pb(e: AliasHistoryEntry) -> pb::AliasHistoryEntry {
    pb::AliasHistoryEntry {
        namespace: e.namespace,
        alias: e.alias,
        revision: e.revision,
        run_id: e.run_id.map(|u| u.to_string()).unwrap_or_default(),
        previous_run_id: e.previous_run_id.map(|u| u.to_string()).unwrap_or_default(),
        reason: e.reason,
        actor: e.actor,
        time: timestamp(e.time),
        action: action_to_pb(e.action) as i32,
        description: e.description,
    }
}

pub fn event_to_pb(e: AliasEvent) -> pb::WatchAliasesResponse {
    let kind = match e.kind {
        AliasEventKind::Snapshot => pb::AliasEventType::Snapshot,
        AliasEventKind::Changed => pb::AliasEventType::Changed,
        AliasEventKind::Deleted => pb::AliasEventType::Deleted,
    };
    pb::WatchAliasesResponse {
        alias: Some(pb::Alias {
            namespace: e.namespace,
            alias: e.alias,
            run_id: e.run_id.map(|u| u.to_string()).unwrap_or_default(),
            description: e.description,
            revision: e.revision,
            update_time: timestamp(e.time),
            updated_by: e.actor,
        }),
        r#type: kind as i32,
    }
}
