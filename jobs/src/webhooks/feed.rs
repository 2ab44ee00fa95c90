//! The delivery queue: an apalis backend whose jobs are the `webhook_deliveries` rows, on every
//! backend (SQLite, Postgres, and Postgres with the Redis queue).
//!
//! Why the rows rather than a Redis stream: a delivery must wait for the earlier events of its
//! subject to reach the same endpoint, and an endpoint may hold only a few workers at once; both
//! are conditions on other rows, which one claim statement over the table checks atomically
//! (`Store::claim_due_deliveries`), where a stream hands out entries in push order to whoever
//! reads next. The row is the durable record either way, so there is nothing to reconcile.
//!
//! A fetcher claims due rows in batches under a lease (an attempt counted), hands them to the
//! apalis worker, and sleeps until the earliest `next_attempt_at`, a wake-up or the fallback
//! poll. Wake-ups come from this process's writes ([`super::wake`]) and, on Postgres, from every
//! process through `LISTEN herald_webhook_due`. A worker killed mid-attempt leaves its lease to
//! lapse; the fetcher then gives the row back (`release_lapsed_deliveries`) and it is sent again
//! under the same event id.

use std::{
    fmt,
    pin::Pin,
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
use tokio::sync::{mpsc, watch};

use crate::{
    metrics as m,
    store::{DeliveryRow, Pool, Store},
};

/// How long events and finished deliveries are kept: the delivery log's and a replay's reach.
pub const RETENTION: chrono::Duration = chrono::Duration::days(30);
/// How often a fetcher prunes what is older, and how many rows one statement deletes at most.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const PRUNE_BATCH: i64 = 1000;

/// A delivery this worker holds the lease of.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery: DeliveryRow,
}

/// How the fetcher claims.
#[derive(Debug, Clone)]
pub struct DeliveryFeedConfig {
    /// How long a claim holds a delivery.
    pub lease: Duration,
    /// The most deliveries claimed at once, and held ready beyond the running ones.
    pub batch: usize,
    /// Deliveries to one endpoint in flight at once.
    pub per_endpoint: usize,
    /// How long an idle fetcher sleeps at most.
    pub poll: Duration,
    /// How often it gives back deliveries whose worker died.
    pub lapsed_every: Duration,
}

/// The apalis backend of the delivery queue. Give it to `WorkerBuilder::backend`.
pub struct DeliveryFeed {
    store: Store,
    config: DeliveryFeedConfig,
    tasks: Option<mpsc::Receiver<Task<ClaimedDelivery>>>,
    stop: Option<watch::Sender<bool>>,
    closing: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    fetcher: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for DeliveryFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryFeed")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl DeliveryFeed {
    pub fn new(store: Store, config: DeliveryFeedConfig) -> Self {
        Self {
            store,
            config,
            tasks: None,
            stop: None,
            closing: None,
            fetcher: None,
        }
    }

    fn start(&mut self) -> &mut mpsc::Receiver<Task<ClaimedDelivery>> {
        if self.tasks.is_none() {
            let (tx, rx) = mpsc::channel(self.config.batch.max(1));
            let (stop_tx, stop_rx) = watch::channel(false);
            if let Pool::Postgres(pool) = self.store.pool() {
                tokio::spawn(listen(pool.clone(), stop_rx.clone()));
            }
            let fetcher = fetch(self.store.clone(), self.config.clone(), tx, stop_rx);
            self.fetcher = Some(tokio::spawn(fetcher));
            self.stop = Some(stop_tx);
            self.tasks = Some(rx);
        }
        self.tasks.as_mut().expect("just started")
    }
}

impl Drop for DeliveryFeed {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(true);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("delivery feed: {0}")]
pub struct FeedError(String);

impl Backend for DeliveryFeed {
    type Task = Task<ClaimedDelivery>;
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
    ) -> Poll<Option<Result<Task<ClaimedDelivery>, FeedError>>> {
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
            // Deliveries claimed but not started keep their lease until it lapses.
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

impl BackendConfig for DeliveryFeed {
    type Args = ClaimedDelivery;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = DeliveryFeedConfig;
    type Layer = Identity;

    fn config(&self) -> &DeliveryFeedConfig {
        &self.config
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}

async fn fetch(
    store: Store,
    config: DeliveryFeedConfig,
    tx: mpsc::Sender<Task<ClaimedDelivery>>,
    mut stop: watch::Receiver<bool>,
) {
    let lease = chrono::Duration::from_std(config.lease).unwrap_or(chrono::Duration::MAX);
    let mut lapsed_at = tokio::time::Instant::now();
    let mut prune_at = tokio::time::Instant::now() + PRUNE_EVERY;
    let mut failures = 0u32;
    let mut due = super::wakeups();
    loop {
        let permit = tokio::select! {
            p = tx.reserve() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        if *stop.borrow() {
            return;
        }
        let want = (1 + tx.capacity()).min(config.batch);
        let now = Utc::now();
        if tokio::time::Instant::now() >= lapsed_at {
            lapsed_at = tokio::time::Instant::now() + config.lapsed_every;
            match store.release_lapsed_deliveries(now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    deliveries = n,
                    "gave back webhook deliveries whose worker stopped"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "giving back lapsed webhook deliveries failed")
                }
            }
        }
        if tokio::time::Instant::now() >= prune_at {
            prune_at = tokio::time::Instant::now() + PRUNE_EVERY;
            prune(&store, now - RETENTION).await;
        }
        let claimed = store
            .claim_due_deliveries(now, now + lease, want as i64, config.per_endpoint as i64)
            .await;
        let claimed = match claimed {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "claiming due webhook deliveries failed; trying again");
                metrics::counter!(m::SWEEP_RUNS_TOTAL, "sweep" => "webhook_feed", "result" => "error")
                    .increment(1);
                let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                drop(permit);
                if wait(&mut stop, &mut due, pause, true).await {
                    return;
                }
                continue;
            }
        };
        failures = 0;
        let full = claimed.len() == want;
        let mut permit = Some(permit);
        for delivery in claimed {
            let task = TaskBuilder::new(ClaimedDelivery { delivery }).build();
            match permit.take() {
                Some(p) => p.send(task),
                None => {
                    if tx.send(task).await.is_err() {
                        return;
                    }
                }
            }
        }
        drop(permit);
        if full {
            continue;
        }
        let mut pause = config
            .poll
            .min(lapsed_at.saturating_duration_since(tokio::time::Instant::now()));
        match store.next_delivery_due(now).await {
            Ok(Some(at)) => {
                pause = pause.min((at - Utc::now()).to_std().unwrap_or(Duration::ZERO));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the next due webhook delivery failed"),
        }
        if wait(&mut stop, &mut due, pause, false).await {
            return;
        }
    }
}

/// Deletes events and finished deliveries from before `before`, a batch per statement, so the
/// tables stay bounded and no statement holds SQLite's write lock for long.
async fn prune(store: &Store, before: chrono::DateTime<Utc>) {
    loop {
        match store.prune_webhook_history(before, PRUNE_BATCH).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "pruning old webhook events failed");
                return;
            }
        }
    }
}

/// Sleeps for `pause` or until woken (unless `ignore_wake`); true when the feed is stopping.
async fn wait(
    stop: &mut watch::Receiver<bool>,
    due: &mut watch::Receiver<u64>,
    pause: Duration,
    ignore_wake: bool,
) -> bool {
    if pause.is_zero() {
        return *stop.borrow();
    }
    tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = due.changed(), if !ignore_wake => false,
        _ = stop.changed() => true,
    }
}

/// Wakes the fetcher on every notification of the Postgres channel, from any process.
async fn listen(pool: sqlx::PgPool, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
            l.listen(super::CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match listener.await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN {} failed; relying on polling", super::CHANNEL);
                failures += 1;
                let pause = Duration::from_millis(200 * u64::from(failures.min(25)));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        failures = 0;
        super::wake();
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(_) => super::wake(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                        super::wake();
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}
