//! The share queue on the store's own engines: an apalis backend whose jobs are the `shares` rows.
//!
//! On SQLite and on Postgres without Redis, a share needs no second record in a queue: a row that
//! is `queued` and due *is* the job. A fetcher claims due rows in batches straight from the table
//! ([`Store::claim_due_shares`]: one statement sets the lease and counts the attempt), hands them
//! to the apalis worker, and sleeps until the earliest `run_at` it knows of, a wake-up, or the
//! fallback poll, whichever comes first. Wake-ups come from pushes in this process ([`Wakeups`])
//! and, on Postgres, from every other process through `LISTEN herald_share_queued` (a trigger
//! notifies whenever a write makes a share queued). A share whose worker died keeps its lease
//! until it lapses; the fetcher then claims it again as recovered. So nothing that is due can be
//! left behind, and due times are kept to the millisecond.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    layers::Identity,
    task::{Task, builder::TaskBuilder, task_id::RandomId},
    worker::context::WorkerContext,
};
use chrono::Utc;
use futures::FutureExt;
use tokio::sync::{Notify, mpsc, watch};

use crate::{
    metrics as m,
    store::{ConnectionRow, Pool, ShareRow, Store},
};

/// The Postgres channel a trigger notifies when a share becomes queued.
pub(crate) const CHANNEL: &str = "herald_share_queued";

/// A share this worker holds the lease of.
#[derive(Debug, Clone)]
pub struct ClaimedShare {
    /// Boxed: the task carries it through the platform call, beside hundreds of others.
    pub share: Box<ShareRow>,
    /// The previous attempt's worker vanished mid-call: that attempt may have reached the platform.
    pub recovered: bool,
    /// Its connection, read with the rest of the batch (`None`: read it when the share runs).
    pub connection: Option<Box<ConnectionRow>>,
}

/// How the fetcher claims.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// How long a claim holds a share (the attempt's lease).
    pub lease: Duration,
    /// The most shares claimed by one statement, and held ready beyond the running ones.
    pub batch: usize,
    /// How long an idle fetcher sleeps at most, for writes it is not told about.
    pub poll: Duration,
    /// How often it looks for shares whose worker died.
    pub lapsed_every: Duration,
}

/// The apalis backend of the share queue on the store. Give it to `WorkerBuilder::backend`.
pub struct ShareFeed {
    store: Store,
    wake: Arc<Notify>,
    config: FeedConfig,
    tasks: Option<mpsc::Receiver<Task<ClaimedShare>>>,
    stop: Option<watch::Sender<bool>>,
    closing: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    fetcher: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for ShareFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareFeed")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ShareFeed {
    /// `wake` is the notifier that pushes in this process signal (see `Wakeups::share`).
    pub fn new(store: Store, wake: Arc<Notify>, config: FeedConfig) -> Self {
        Self {
            store,
            wake,
            config,
            tasks: None,
            stop: None,
            closing: None,
            fetcher: None,
        }
    }

    fn start(&mut self) -> &mut mpsc::Receiver<Task<ClaimedShare>> {
        if self.tasks.is_none() {
            let (tx, rx) = mpsc::channel(self.config.batch.max(1));
            let (stop_tx, stop_rx) = watch::channel(false);
            let fetcher = Fetcher {
                store: self.store.clone(),
                wake: self.wake.clone(),
                config: self.config.clone(),
            };
            if let Pool::Postgres(pool) = self.store.pool() {
                tokio::spawn(listen(pool.clone(), self.wake.clone(), stop_rx.clone()));
            }
            self.fetcher = Some(tokio::spawn(fetcher.run(tx, stop_rx)));
            self.stop = Some(stop_tx);
            self.tasks = Some(rx);
        }
        self.tasks.as_mut().expect("just started")
    }
}

impl Drop for ShareFeed {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(true);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("share feed: {0}")]
pub struct FeedError(String);

impl Backend for ShareFeed {
    type Task = Task<ClaimedShare>;
    type Error = FeedError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), FeedError>> {
        self.start();
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<ClaimedShare>, FeedError>>> {
        // Store errors never end the stream: the fetcher logs them and tries again.
        self.start().poll_recv(cx).map(|t| t.map(Ok))
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), FeedError>> {
        if self.closing.is_none() {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(true);
            }
            let fetcher = self.fetcher.take();
            // Shares claimed but not started keep their lease; it lapses and the next fetcher
            // (here or in another process) claims them again.
            self.closing = Some(Box::pin(async move {
                if let Some(f) = fetcher {
                    let _ = f.await;
                }
            }));
        }
        self.closing
            .as_mut()
            .expect("set above")
            .poll_unpin(cx)
            .map(Ok)
    }
}

impl BackendConfig for ShareFeed {
    type Args = ClaimedShare;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = FeedConfig;
    type Layer = Identity;

    fn config(&self) -> &FeedConfig {
        &self.config
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}

struct Fetcher {
    store: Store,
    wake: Arc<Notify>,
    config: FeedConfig,
}

impl Fetcher {
    async fn run(self, tx: mpsc::Sender<Task<ClaimedShare>>, mut stop: watch::Receiver<bool>) {
        let lease = chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::MAX);
        let mut lapsed_at = tokio::time::Instant::now();
        let mut failures = 0u32;
        loop {
            // Claim only what the worker has room for: a claimed share holds a lease.
            let permit = tokio::select! {
                p = tx.reserve() => match p { Ok(p) => p, Err(_) => return },
                _ = stop.changed() => return,
            };
            if *stop.borrow() {
                return;
            }
            let want = (1 + tx.capacity()).min(self.config.batch);
            let now = Utc::now();
            let mut claimed = Vec::new();
            let lapsed = tokio::time::Instant::now() >= lapsed_at;
            if lapsed {
                lapsed_at = tokio::time::Instant::now() + self.config.lapsed_every;
            }
            // Whatever was claimed before an error is still handed over: it holds leases.
            let result = self
                .claim(&mut claimed, now, now + lease, want, lapsed)
                .await;
            let full = claimed.len() == want;
            let mut permit = Some(permit);
            for job in claimed {
                let task = TaskBuilder::new(job).build();
                match permit.take() {
                    Some(p) => p.send(task),
                    // `want` counted the room there was; nothing else sends on this channel.
                    None => {
                        if tx.send(task).await.is_err() {
                            return;
                        }
                    }
                }
            }
            drop(permit);
            if let Err(e) = result {
                failures += 1;
                tracing::warn!(error = %format!("{e:#}"), "claiming due shares failed; trying again");
                metrics::counter!(m::SWEEP_RUNS_TOTAL, "sweep" => "share_feed", "result" => "error")
                    .increment(1);
                let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                if wait(&mut stop, &self.wake, pause, true).await {
                    return;
                }
                continue;
            }
            failures = 0;
            if full {
                continue;
            }
            // Idle: sleep until the next share is due, a push, or the fallback poll.
            let mut pause = self
                .config
                .poll
                .min(lapsed_at.saturating_duration_since(tokio::time::Instant::now()));
            match self.store.next_share_due(now).await {
                Ok(Some(at)) => {
                    let until = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    pause = pause.min(until);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the next due share failed"),
            }
            if wait(&mut stop, &self.wake, pause, false).await {
                return;
            }
        }
    }
}

impl Fetcher {
    /// Claims up to `want` shares into `claimed`: those whose lease lapsed first (when `lapsed`),
    /// then due ones, each with its connection.
    async fn claim(
        &self,
        claimed: &mut Vec<ClaimedShare>,
        now: chrono::DateTime<Utc>,
        lease_until: chrono::DateTime<Utc>,
        want: usize,
        lapsed: bool,
    ) -> anyhow::Result<()> {
        let new = |recovered| {
            move |share| ClaimedShare {
                share: Box::new(share),
                recovered,
                connection: None,
            }
        };
        if lapsed {
            let rows = self
                .store
                .claim_lapsed_shares(now, lease_until, want as i64)
                .await?;
            claimed.extend(rows.into_iter().map(new(true)));
        }
        let room = want - claimed.len();
        if room > 0 {
            let rows = self
                .store
                .claim_due_shares(now, lease_until, room as i64)
                .await?;
            claimed.extend(rows.into_iter().map(new(false)));
        }
        // The batch's connections in one read, rather than one per share.
        let ids: Vec<&str> = claimed
            .iter()
            .map(|c| c.share.connection_id.as_str())
            .collect();
        let connections: std::collections::HashMap<String, ConnectionRow> = self
            .store
            .connections_by_ids(&ids)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        for c in claimed.iter_mut() {
            c.connection = connections
                .get(&c.share.connection_id)
                .cloned()
                .map(Box::new);
        }
        Ok(())
    }
}

/// Sleeps for `pause` or until woken (unless `ignore_wake`); true when the feed is stopping.
async fn wait(
    stop: &mut watch::Receiver<bool>,
    wake: &Notify,
    pause: Duration,
    ignore_wake: bool,
) -> bool {
    if pause.is_zero() {
        return *stop.borrow();
    }
    tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = wake.notified(), if !ignore_wake => false,
        _ = stop.changed() => true,
    }
}

/// Wakes the fetcher on every notification of the Postgres channel, from any process.
async fn listen(pool: sqlx::PgPool, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut l) => match l.listen(CHANNEL).await {
                Ok(()) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN {CHANNEL} failed; relying on polling");
                    failures += 1;
                    if pause_or_stop(&mut stop, failures).await {
                        return;
                    }
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the LISTEN connection; relying on polling");
                failures += 1;
                if pause_or_stop(&mut stop, failures).await {
                    return;
                }
                continue;
            }
        };
        failures = 0;
        // Anything written while the listener was away is found by this claim.
        wake.notify_one();
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => wake.notify_one(),
                    // The connection dropped; notifications in between may be lost: claim now.
                    Ok(None) => wake.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                        wake.notify_one();
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}

async fn pause_or_stop(stop: &mut watch::Receiver<bool>, failures: u32) -> bool {
    let pause = Duration::from_millis(200 * u64::from(failures.min(25)));
    tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = stop.changed() => true,
    }
}
