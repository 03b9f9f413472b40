//! Postgres announcements of alias changes (`LISTEN capstan_alias`, the channel the
//! alias-history trigger notifies) as the domain's [`ChangeHint`]s, from this replica's
//! one listening connection (see [`capstan_server::fanout`]).

use std::time::Duration;

use capstan_server::fanout::{self, Notice};
use futures::{stream::BoxStream, StreamExt};

use crate::domain::ports::ChangeHint;

/// The replica's one safety-net round trip per this interval, whatever the number of
/// watchers: the listener's liveness probe.
const PROBE: Duration = Duration::from_secs(1);

pub(super) fn alias_notifications(url: String) -> BoxStream<'static, ChangeHint> {
    fanout::postgres(url, &["capstan_alias"], PROBE)
        .map(|n| match n {
            Notice::Listening => ChangeHint::Listening,
            Notice::Lost => ChangeHint::Lost,
            Notice::Message { .. } | Notice::Moved => ChangeHint::Changed,
        })
        .boxed()
}
