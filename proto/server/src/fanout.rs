//! Watching that costs nothing while nothing happens, shared by both services.
//!
//! Each replica keeps one source of change announcements ([`postgres`]: one `LISTEN`
//! connection; [`polled`]: one cheap cursor query per interval where the database cannot
//! announce, as SQLite shared by several processes) and fans them out to its watchers in
//! memory. A watcher never polls the database itself: it re-reads only when woken, and
//! watchers woken by the same change at the same position share one read ([`Coalesce`]).
//!
//! The announcements are hints, the store stays the truth: whenever they may have been
//! missed (the listener was lost, or has just started) the source says
//! [`Notice::Listening`] and every watcher re-reads once from its last position.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{
    future::{BoxFuture, Shared},
    stream::BoxStream,
    FutureExt, StreamExt,
};
use sqlx::postgres::PgListener;
use tokio::time::Instant;

/// What a replica's change source says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Announcements flow (again); anything before may have been missed: re-read all.
    Listening,
    /// Announcements stopped; `Listening` follows when they resume.
    Lost,
    /// One announcement, as the writer sent it.
    Message { channel: String, payload: String },
    /// Something changed, unknown what (a polled cursor moved): re-read all.
    Moved,
}

/// Pauses between attempts to listen again: from the first to the last, doubling.
const RELISTEN_PAUSES: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

/// One `LISTEN` connection on `channels` as [`Notice`]s. A lost connection is said (`Lost`)
/// and listened on again, so that nobody trusts a quiet listener that is in fact deaf; and
/// every `probe` of quiet the connection is asked to answer (the replica's one safety-net
/// round trip per interval, whatever the number of watchers), so that a silently dead
/// connection is found too. The probe repeats `LISTEN` (a no-op), which keeps the session
/// recognisable as the listener in `pg_stat_activity`.
pub fn postgres(
    url: String,
    channels: &'static [&'static str],
    probe: Duration,
) -> BoxStream<'static, Notice> {
    enum State {
        Connect(Duration),
        Listen(Box<PgListener>, Instant),
    }
    let lost = move |what: &str, e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, channels = ?channels, "{what}; listening again");
        Some((Notice::Lost, State::Connect(RELISTEN_PAUSES.0)))
    };
    futures::stream::unfold(State::Connect(Duration::ZERO), move |state| {
        let url = url.clone();
        async move {
            match state {
                State::Connect(pause) => {
                    tokio::time::sleep(pause).await;
                    match listen(&url, channels).await {
                        Ok(l) => Some((
                            Notice::Listening,
                            State::Listen(Box::new(l), Instant::now() + probe),
                        )),
                        Err(e) => {
                            let next = (pause * 2).clamp(RELISTEN_PAUSES.0, RELISTEN_PAUSES.1);
                            tracing::warn!(error = %e, channels = ?channels, retry_in = ?next, "cannot LISTEN; watchers wait for the listener");
                            Some((Notice::Lost, State::Connect(next)))
                        }
                    }
                }
                State::Listen(mut l, mut due) => loop {
                    // Reading is cancel-safe in sqlx (buffered socket); at worst a torn
                    // message fails the next read, which is a lost listener like any other.
                    tokio::select! {
                        r = l.try_recv() => return match r {
                            Ok(Some(n)) => Some((
                                Notice::Message {
                                    channel: n.channel().to_string(),
                                    payload: n.payload().to_string(),
                                },
                                State::Listen(l, Instant::now() + probe),
                            )),
                            Ok(None) => lost("notification connection lost", &"closed"),
                            Err(e) => lost("notification listener failed", &e),
                        },
                        _ = tokio::time::sleep_until(due) => {
                            let probe_sql = format!("LISTEN {}", channels[0]);
                            match sqlx::query(&probe_sql).execute(&mut *l).await {
                                Ok(_) => due = Instant::now() + probe,
                                Err(e) => return lost("notification connection does not answer", &e),
                            }
                        }
                    }
                },
            }
        }
    })
    .boxed()
}

async fn listen(url: &str, channels: &[&str]) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect(url).await?;
    // A lost connection must surface as `None`, not be mended silently in `try_recv`.
    l.eager_reconnect(false);
    l.listen_all(channels.iter().copied()).await?;
    Ok(l)
}

/// Where the database cannot announce changes: one cursor read every `every` (something
/// that moves with every change, such as the largest row id of an append-only log), said
/// as [`Notice::Moved`] when it moved. The first read only sets the mark (`Listening`).
pub fn polled<F, Fut, E>(every: Duration, cursor: F) -> BoxStream<'static, Notice>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<i64, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    futures::stream::unfold(
        (cursor, None::<i64>, true),
        move |(mut cursor, mut mark, mut first)| async move {
            loop {
                if !first {
                    tokio::time::sleep(every).await;
                }
                first = false;
                match cursor().await {
                    Ok(now) => match mark.replace(now) {
                        None => return Some((Notice::Listening, (cursor, mark, first))),
                        Some(was) if was != now => {
                            return Some((Notice::Moved, (cursor, mark, first)))
                        }
                        Some(_) => {}
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the change cursor; trying again")
                    }
                }
            }
        },
    )
    .boxed()
}

type SharedRead<T, E> = Shared<BoxFuture<'static, Result<Arc<T>, Arc<E>>>>;
/// The newest epoch, and its reads by key.
type Reads<K, T, E> = (u64, HashMap<K, SharedRead<T, E>>);

/// Watchers woken by the same change ask the store the same question (the same key: what
/// came after the same position); the first asks, the others wait for its answer. A read
/// started after a watcher saw its wake-up reflects that wake-up's change, so an answer is
/// reused by every watcher whose wake-up count (`epoch`) is no newer than the newest one
/// seen when it started. Only the newest epoch's answers are kept (memory is bounded by
/// the keys of one wake-up), and failures are not kept: whoever retries reads again.
pub struct Coalesce<K, T, E> {
    reads: Mutex<Reads<K, T, E>>,
}

impl<K, T, E> Default for Coalesce<K, T, E> {
    fn default() -> Self {
        Self {
            reads: Mutex::new((0, HashMap::new())),
        }
    }
}

impl<K, T, E> Coalesce<K, T, E>
where
    K: Hash + Eq + Clone,
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// `read`'s answer for `key`, or that of a read of `key` started after `epoch` was seen.
    pub async fn read<F>(&self, key: K, epoch: u64, read: F) -> Result<Arc<T>, Arc<E>>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let shared = {
            let mut guard = self.reads.lock().unwrap_or_else(|p| p.into_inner());
            let (newest, reads) = &mut *guard;
            if epoch > *newest {
                *newest = epoch;
                reads.clear();
            }
            reads
                .entry(key.clone())
                .or_insert_with(|| {
                    read.map(|r| r.map(Arc::new).map_err(Arc::new))
                        .boxed()
                        .shared()
                })
                .clone()
        };
        let answer = shared.clone().await;
        if answer.is_err() {
            let mut guard = self.reads.lock().unwrap_or_else(|p| p.into_inner());
            if guard.1.get(&key).is_some_and(|r| r.ptr_eq(&shared)) {
                guard.1.remove(&key);
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_read_per_key_and_wake_up_and_none_older_than_the_wake_up() {
        let c: Coalesce<&str, usize, String> = Coalesce::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let read = |n: usize| {
            let reads = reads.clone();
            async move {
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Ok::<_, String>(n)
            }
        };
        let same = futures::future::join_all((0..100).map(|_| c.read("a", 1, read(1)))).await;
        assert!(same.iter().all(|r| r.as_deref() == Ok(&1)));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for one wake-up");
        // A later wake-up never gets the earlier answer; another key is its own read.
        assert_eq!(*c.read("a", 2, read(2)).await.unwrap(), 2);
        assert_eq!(*c.read("b", 2, read(3)).await.unwrap(), 3);
        // A laggard of an older wake-up may take the newer answer.
        assert_eq!(*c.read("a", 1, read(4)).await.unwrap(), 2);
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        // A failure is not kept: the retry of the same wake-up reads again.
        let down = c.read("c", 2, async { Err::<usize, _>("down".to_string()) });
        assert_eq!(*down.await.unwrap_err(), "down");
        assert_eq!(*c.read("c", 2, read(5)).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_polled_cursor_says_only_when_it_moved() {
        let values = Arc::new(Mutex::new(vec![7, 7, 7, 8, 8, 9].into_iter()));
        let v = values.clone();
        let notices: Vec<Notice> = polled(Duration::from_millis(1), move || {
            let next = v.lock().unwrap().next();
            async move { next.ok_or("drained") }
        })
        .take(3)
        .collect()
        .await;
        assert_eq!(notices, [Notice::Listening, Notice::Moved, Notice::Moved]);
    }
}
