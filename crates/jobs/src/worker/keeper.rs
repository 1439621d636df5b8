//! The worker's keeper: a thread of its own, with a single-threaded runtime and a Redis
//! connection of its own, that beats the worker's heartbeat and renews its running jobs'
//! leases. A handler that blocks its thread (CPU-bound work written without
//! `spawn_blocking`) stalls the runtime it runs on, never the keeper: a live worker keeps its
//! jobs however long their handlers block.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::Connector;
use crate::queue::millis;
use crate::scripts::{EXTEND, invocation};

/// What the keeper knows of a running job's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lease {
    /// Renewed (or not yet due).
    Held,
    /// Taken back by the queue (the sweep gave it to another worker): stop, report nothing.
    Lost,
    /// Cancelled: stop.
    Cancelled,
}

/// A queue the worker beats in: its key prefix and its keys.
#[derive(Clone, Debug)]
pub(super) struct BeatIn {
    pub(super) prefix: String,
    pub(super) keys: Arc<[String]>,
}

/// What the worker's heartbeat says of it.
#[derive(Clone, Debug)]
pub(super) struct Beat {
    pub(super) queues: Vec<Arc<BeatIn>>,
    pub(super) worker: String,
    pub(super) ttl: Duration,
    pub(super) host: String,
    pub(super) names: String,
    pub(super) every: Duration,
}

struct Watched {
    queue: Arc<BeatIn>,
    id: String,
    token: String,
    next: Instant,
    reply: watch::Sender<Lease>,
}

enum Command {
    Watch(Watched),
    Forget(String),
}

/// What the worker asks of its keeper, picked up at the keeper's next tick (at most 100 ms
/// later, well inside the first renewal): a job's take and end cost no wake-up of the keeper's
/// thread, which matters at one job at a time.
type Inbox = Arc<Mutex<Vec<Command>>>;

fn post(inbox: &Inbox, command: Command) {
    inbox
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(command);
}

/// The keeper's handle; dropping it ends the keeper (its thread returns).
pub(super) struct Keeper {
    inbox: Inbox,
    _stop: oneshot::Sender<()>,
    lease: Duration,
}

/// A job's registration with the keeper: its lease's news, and forgetting it when dropped.
pub(super) struct Watch {
    pub(super) lease: watch::Receiver<Lease>,
    token: String,
    inbox: Inbox,
}

impl Drop for Watch {
    fn drop(&mut self) {
        post(
            &self.inbox,
            Command::Forget(std::mem::take(&mut self.token)),
        );
    }
}

impl Keeper {
    /// Starts the keeper's thread: it beats `beat` and renews watched leases for `lease` each
    /// third of it (at most every second), on connections from `connector`.
    pub(super) fn start<K: Connector>(
        connector: Arc<K>,
        beat: Beat,
        lease: Duration,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = oneshot::channel();
        let inbox = Inbox::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let kept = Arc::clone(&inbox);
        std::thread::Builder::new()
            .name("geostack-jobs-keeper".into())
            .spawn(move || runtime.block_on(keep(connector, kept, stopped, beat, lease)))?;
        Ok(Self {
            inbox,
            _stop: stop,
            lease,
        })
    }

    /// Watches the lease of job `id` (locked with `token`) in `queue` from now on.
    pub(super) fn watch(&self, queue: &Arc<BeatIn>, id: &str, token: &str) -> Watch {
        let (reply, lease) = watch::channel(Lease::Held);
        post(
            &self.inbox,
            Command::Watch(Watched {
                queue: Arc::clone(queue),
                id: id.to_owned(),
                token: token.to_owned(),
                next: Instant::now() + renewal(self.lease),
                reply,
            }),
        );
        Watch {
            lease,
            token: token.to_owned(),
            inbox: Arc::clone(&self.inbox),
        }
    }
}

/// How often a lease is renewed: every third of it, or every second, whichever is sooner.
fn renewal(lease: Duration) -> Duration {
    (lease / 3).min(Duration::from_secs(1))
}

async fn keep<K: Connector>(
    connector: Arc<K>,
    inbox: Inbox,
    mut stopped: oneshot::Receiver<()>,
    beat: Beat,
    lease: Duration,
) {
    let period = renewal(lease);
    // A call that takes longer than this is given up (and the connection made anew): a
    // renewal must not wait past the lease it keeps.
    let patience = period.max(Duration::from_millis(200));
    let mut conn: Option<K::Connection> = None;
    let mut jobs: HashMap<String, Watched> = HashMap::new();
    let mut beats = tokio::time::interval(beat.every);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewals = tokio::time::interval(period.min(Duration::from_millis(100)));
    renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = beats.tick() => {
                for q in &beat.queues {
                    let invocation = crate::registry::heartbeat(
                        &q.keys, &q.prefix, &beat.worker, beat.ttl, &beat.host, &beat.names,
                    );
                    let Some(c) = connected(&*connector, &mut conn, patience).await else { break };
                    let call = invocation.invoke_async::<i64>(c);
                    if !matches!(tokio::time::timeout(patience, call).await, Ok(Ok(_))) {
                        conn = None;
                    }
                }
            }
            _ = renewals.tick() => {
                let commands = std::mem::take(
                    &mut *inbox.lock().unwrap_or_else(PoisonError::into_inner),
                );
                for command in commands {
                    match command {
                        Command::Watch(w) => {
                            jobs.insert(w.token.clone(), w);
                        }
                        Command::Forget(token) => {
                            jobs.remove(&token);
                        }
                    }
                }
                let now = Instant::now();
                let due: Vec<String> = jobs
                    .values()
                    .filter(|w| w.next <= now)
                    .map(|w| w.token.clone())
                    .collect();
                for token in due {
                    let Some(w) = jobs.get_mut(&token) else { continue };
                    let Some(c) = connected(&*connector, &mut conn, patience).await else { break };
                    let mut invocation = invocation(&EXTEND, &w.queue.keys, &w.queue.prefix);
                    invocation
                        .arg(&w.id)
                        .arg(&w.token)
                        .arg(millis(lease));
                    let call = invocation.invoke_async::<i64>(c);
                    let kept = match tokio::time::timeout(patience, call).await {
                        Ok(Ok(kept)) => kept,
                        _ => {
                            // Tried again at the next tick, on a new connection.
                            conn = None;
                            continue;
                        }
                    };
                    w.next = Instant::now() + period;
                    let news = match kept {
                        0 => Lease::Lost,
                        2 => Lease::Cancelled,
                        _ => continue,
                    };
                    let _ = w.reply.send(news);
                    jobs.remove(&token);
                }
            }
        }
    }
}

/// The keeper's connection, made when there is none.
async fn connected<'a, K: Connector>(
    connector: &K,
    conn: &'a mut Option<K::Connection>,
    patience: Duration,
) -> Option<&'a mut K::Connection> {
    if conn.is_none() {
        *conn = tokio::time::timeout(patience, connector.blocking())
            .await
            .ok()
            .and_then(Result::ok);
    }
    conn.as_mut()
}
