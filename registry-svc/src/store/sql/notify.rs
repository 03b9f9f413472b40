//! Postgres announcements of alias changes (`LISTEN capstan_alias`, the channel the
//! alias-history trigger notifies), as the domain's [`ChangeHint`]s.

use std::time::Duration;

use futures::{stream::BoxStream, StreamExt};
use sqlx::postgres::PgListener;

use crate::domain::ports::ChangeHint;

/// Pauses between attempts to listen again: from the first to the last, doubling.
const RELISTEN_PAUSES: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

/// `LISTEN capstan_alias` (the alias-history trigger's channel) as [`ChangeHint`]s; a lost
/// connection is said (`Lost`) and listened on again, so that nobody trusts a quiet
/// listener that is in fact deaf.
pub(super) fn alias_notifications(url: String) -> BoxStream<'static, ChangeHint> {
    enum State {
        Connect(Duration),
        Listen(PgListener),
    }
    futures::stream::unfold(State::Connect(Duration::ZERO), move |state| {
        let url = url.clone();
        async move {
            match state {
                State::Connect(pause) => {
                    tokio::time::sleep(pause).await;
                    match listen(&url).await {
                        Ok(l) => Some((ChangeHint::Listening, State::Listen(l))),
                        Err(e) => {
                            let next = (pause * 2).clamp(RELISTEN_PAUSES.0, RELISTEN_PAUSES.1);
                            tracing::warn!(error = %e, retry_in = ?next, "cannot LISTEN for alias changes; watchers poll and alias reads go to the database meanwhile");
                            Some((ChangeHint::Lost, State::Connect(next)))
                        }
                    }
                }
                State::Listen(mut l) => match l.try_recv().await {
                    Ok(Some(_)) => Some((ChangeHint::Changed, State::Listen(l))),
                    Ok(None) => {
                        tracing::warn!("alias notification connection lost; listening again");
                        Some((ChangeHint::Lost, State::Connect(RELISTEN_PAUSES.0)))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "alias notification listener failed; listening again");
                        Some((ChangeHint::Lost, State::Connect(RELISTEN_PAUSES.0)))
                    }
                },
            }
        }
    })
    .boxed()
}

async fn listen(url: &str) -> std::result::Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect(url).await?;
    // A lost connection must surface as `None`, not be mended silently in `try_recv`.
    l.eager_reconnect(false);
    l.listen("capstan_alias").await?;
    Ok(l)
}
