//! `WatchOperation`: the stored events after a sequence, then live ones, until the
//! terminal event.
//!
//! The event log is the truth; notifications are only hints. A watcher subscribes to the
//! in-process hub *before* reading the store, so an event written in between arrives
//! through one or the other, and it forwards only the next sequence it expects: anything
//! else (a gap, a lag, another replica's hint, the replica's resync) sends it back to the
//! store from its last sequence. So no event is lost or repeated, and since publishing
//! never waits for a receiver, a slow watcher never slows the operation.
//!
//! A watcher never polls: the replica's one change source (see
//! [`capstan_server::fanout`]) wakes it, so an idle watcher costs the database nothing,
//! and the watchers one wake-up sends to the store at the same sequence share one read.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use capstan_server::fanout::Coalesce;

use tokio::{
    sync::{broadcast, mpsc, OwnedSemaphorePermit},
    time::Instant,
};
use uuid::Uuid;

use super::{
    operation::{Event, EventType, OpStatus},
    Engine,
};
use crate::{
    domain::now_micros,
    error::{Error, Result},
};

/// Live events buffered per operation for its watchers; a watcher that falls further
/// behind reads the store instead.
const HUB_CAPACITY: usize = 256;
/// Events buffered per watch stream before the watcher waits for its client.
const STREAM_BUFFER: usize = 64;
/// Events read from the store at once.
const READ_BATCH: usize = 500;
/// How soon a watcher whose read failed tries again (only while reads fail).
const RETRY: Duration = Duration::from_secs(1);

#[derive(Clone)]
enum HubMsg {
    Event(Arc<Event>),
    /// Something changed elsewhere (another replica): read the store.
    Wake,
}

/// In-process fan-out of events to the watchers of each operation.
#[derive(Default)]
pub struct Hub {
    channels: Arc<Mutex<HashMap<Uuid, broadcast::Sender<HubMsg>>>>,
    /// Changes told so far: a read started after a watcher saw this count includes them.
    changes: AtomicU64,
    /// Reads of one operation's events after one sequence, shared by the watchers there.
    reads: Coalesce<(Uuid, i64), Vec<Event>, Error>,
}

impl Hub {
    fn send(&self, id: Uuid, msg: HubMsg) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        if let Ok(map) = self.channels.lock() {
            if let Some(tx) = map.get(&id) {
                // An error only means that no watcher is listening right now.
                let _ = tx.send(msg);
            }
        }
    }

    /// Anything may have changed: every watcher of this replica reads the store once.
    pub fn wake_all(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        match self.channels.lock() {
            Ok(map) => {
                for tx in map.values() {
                    // An error only means that no watcher is listening right now.
                    let _ = tx.send(HubMsg::Wake);
                }
            }
            Err(e) => tracing::error!(error = %e, "event hub unavailable; watchers miss a resync"),
        }
    }

    pub fn publish(&self, event: Event) {
        self.send(event.operation_id, HubMsg::Event(Arc::new(event)));
    }

    pub fn wake(&self, id: Uuid) {
        self.send(id, HubMsg::Wake);
    }

    fn subscribe(&self, id: Uuid) -> Subscription {
        let rx = match self.channels.lock() {
            Ok(mut map) => Some(
                map.entry(id)
                    .or_insert_with(|| broadcast::channel(HUB_CAPACITY).0)
                    .subscribe(),
            ),
            // A poisoned map only costs this watcher its live feed: it polls the store.
            Err(e) => {
                tracing::error!(error = %e, "event hub unavailable; watcher polls");
                None
            }
        };
        Subscription {
            channels: self.channels.clone(),
            id,
            rx,
        }
    }
}

/// Removes the operation's channel when its last watcher leaves.
struct Subscription {
    channels: Arc<Mutex<HashMap<Uuid, broadcast::Sender<HubMsg>>>>,
    id: Uuid,
    rx: Option<broadcast::Receiver<HubMsg>>,
}

impl Subscription {
    async fn recv(&mut self) -> std::result::Result<HubMsg, broadcast::error::RecvError> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut map) = self.channels.lock() {
            self.rx.take();
            if map.get(&self.id).is_some_and(|tx| tx.receiver_count() == 0) {
                map.remove(&self.id);
            }
        }
    }
}

impl Engine {
    /// Starts a watch; events arrive on the receiver until the terminal event, the
    /// receiver is dropped, or the server shuts down. `owner`: only that owner's
    /// operation (others get NOT_FOUND).
    pub async fn watch(
        self: &Arc<Self>,
        id: Uuid,
        owner: Option<&str>,
        after_sequence: i64,
    ) -> Result<mpsc::Receiver<Event>> {
        if after_sequence < 0 {
            return Err(Error::invalid("after_sequence", "must not be negative"));
        }
        let sub = self.hub.subscribe(id);
        let op = self.get(id, owner).await?;
        let permit = self.watch_slots.clone().try_acquire_owned().map_err(|_| {
            Error::Exhausted("too many operation watches at once; retry later".into())
        })?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let finished = op.status.is_terminal() && after_sequence >= op.last_sequence;
        let watcher = Watcher {
            engine: self.clone(),
            id,
            tx,
            last: after_sequence,
            status: op.status,
            percent: op.progress_percent,
            last_sent: Instant::now(),
            retry: None,
            _permit: permit,
        };
        if !finished {
            tokio::spawn(async move {
                metrics::gauge!("capstan_operation_watchers").increment(1.0);
                watcher.run(sub).await;
                metrics::gauge!("capstan_operation_watchers").decrement(1.0);
            });
        }
        Ok(rx)
    }
}

struct Watcher {
    engine: Arc<Engine>,
    id: Uuid,
    tx: mpsc::Sender<Event>,
    /// The last sequence sent: the next one sent is always `last + 1`.
    last: i64,
    status: OpStatus,
    percent: i64,
    last_sent: Instant,
    /// When to read again after a failed read.
    retry: Option<Instant>,
    _permit: OwnedSemaphorePermit,
}

impl Watcher {
    async fn run(mut self, mut sub: Subscription) {
        if !self.catch_up().await {
            return;
        }
        let beat = self
            .engine
            .cfg
            .watch_heartbeat
            .max(Duration::from_millis(10));
        let shutdown = self.engine.shutdown.clone();
        loop {
            let more = tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = self.tx.closed() => false,
                msg = sub.recv() => match msg {
                    Ok(HubMsg::Event(e)) if e.sequence <= self.last => true,
                    Ok(HubMsg::Event(e)) if e.sequence == self.last + 1 => {
                        self.send(Event::clone(&e), false).await
                    }
                    // A gap, a lag, a hint from elsewhere: the store has it all.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await,
                    Err(broadcast::error::RecvError::Closed) => self.catch_up().await,
                },
                _ = until(self.retry) => self.catch_up().await,
                _ = tokio::time::sleep_until(self.last_sent + beat) => self.heartbeat().await,
            };
            if !more {
                return;
            }
        }
    }

    /// Sends what the store holds after `last`; `false` when the stream is over. A
    /// FINISHED event that a RETRIED one follows did not end the operation, so the stream
    /// goes on past it: a full batch's last event waits for the next batch to tell.
    async fn catch_up(&mut self) -> bool {
        loop {
            let hub = &self.engine.hub;
            let epoch = hub.changes.load(Ordering::SeqCst);
            let (store, id, after) = (self.engine.store().clone(), self.id, self.last);
            let read = async move { store.events(id, after, READ_BATCH).await };
            let events = match hub.reads.read((id, after), epoch, read).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(operation = %self.id, error = %e, "watch cannot read events; retrying");
                    self.retry = Some(Instant::now() + RETRY);
                    return true;
                }
            };
            self.retry = None;
            let full = events.len() == READ_BATCH;
            let mut events = events.iter().peekable();
            while let Some(e) = events.next() {
                let followed = events.peek().is_some();
                if full && !followed {
                    break;
                }
                if !self.send(e.clone(), followed).await {
                    return false;
                }
            }
            if !full {
                return true;
            }
        }
    }

    /// `false` when the stream is over: the client left, the server is stopping, or this
    /// was the terminal event (and no later event `followed` it).
    async fn send(&mut self, event: Event, followed: bool) -> bool {
        let sequence = event.sequence;
        let terminal = event.is_terminal() && !followed;
        let (status, percent) = (event.status, event.percent);
        let sent = tokio::select! {
            r = self.tx.send(event) => r.is_ok(),
            _ = self.engine.shutdown.cancelled() => false,
        };
        if sent && sequence > 0 {
            self.last = sequence;
            self.status = status;
            self.percent = percent;
        }
        self.last_sent = Instant::now();
        sent && !terminal
    }

    async fn heartbeat(&mut self) -> bool {
        let beat = Event {
            operation_id: self.id,
            sequence: 0,
            time: now_micros(),
            kind: EventType::Heartbeat,
            step: String::new(),
            phase: String::new(),
            status: self.status,
            step_status: None,
            percent: self.percent,
            message: String::new(),
        };
        self.send(beat, false).await
    }
}

/// Never, or at `at`.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
