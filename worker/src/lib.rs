#![doc = include_str!("../README.md")]

use std::{
    future::Future,
    str::FromStr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use apalis::prelude::*;
use apalis_core::backend::ext::{BackendExt, poll_strategy::Strategy};
use apalis_cron::{CronScheduler, Tick};
use futures::FutureExt;
use herald_jobs::{
    Ctx, handlers, metrics as m,
    payloads::{FollowerSyncV1, Job, QueueName, RefreshV1, ShareV1},
    queue::{PostgresQueue, RedisJobQueue, SqliteQueue, Wakeups},
    share_feed::{ClaimedShare, FeedConfig, ShareFeed},
    webhooks::{
        self,
        feed::{ClaimedDelivery, DeliveryFeed, DeliveryFeedConfig},
    },
};

/// The queue backend the workers consume from.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite(SqliteQueue),
    Postgres(PostgresQueue),
    Redis(RedisJobQueue),
}

/// How long in-flight jobs get to finish after a shutdown signal.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// A fallback poll, for pushes from other processes that the in-process wake-up cannot see.
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// The most shares one claim takes from the store (and holds ready beyond the running ones).
const FEED_BATCH: usize = 64;

/// A failed job is logged once here; its row keeps its state and the reconciler or the next
/// sweep picks it up again.
fn logged(queue: QueueName, id: &str, e: anyhow::Error) -> BoxDynError {
    tracing::error!(queue = queue.as_str(), job.subject = %id, error = %format!("{e:#}"), "job failed");
    e.into()
}

async fn share_job(job: ShareV1, id: TaskId, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    handlers::share::run(&ctx, &job, &id.to_string())
        .await
        .map_err(|e| logged(ShareV1::QUEUE, &job.share_id, e))
}

async fn claimed_share_job(job: ClaimedShare, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    let id = job.share.id.clone();
    handlers::share::run_claimed(&ctx, job)
        .await
        .map_err(|e| logged(QueueName::Share, &id, e))
}

async fn webhook_delivery_job(
    job: ClaimedDelivery,
    ctx: Data<Ctx>,
    client: Data<webhooks::send::DeliveryClient>,
) -> Result<(), BoxDynError> {
    let id = job.delivery.id.clone();
    webhooks::send::run(&ctx, &client, job.delivery)
        .await
        .map_err(|e| {
            tracing::error!(webhook.delivery = %id, error = %format!("{e:#}"), "webhook delivery job failed");
            e.into()
        })
}

async fn refresh_job(job: RefreshV1, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    handlers::refresh::run(&ctx, &job)
        .await
        .map_err(|e| logged(RefreshV1::QUEUE, &job.connection_id, e))
}

async fn follower_sync_job(job: FollowerSyncV1, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    handlers::follower_sync::run(&ctx, &job)
        .await
        .map_err(|e| logged(FollowerSyncV1::QUEUE, &job.connection_id, e))
}

/// A tick of the refresh sweep. Every process's cron fires; the store lets one of them run it.
async fn refresh_tick(tick: Tick, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    let key = tick.get_timestamp().to_string();
    handlers::sweeps::refresh_sweep(&ctx, &key)
        .await
        .map(|_| ())
        .map_err(|e| logged(QueueName::Refresh, "sweep", e))
}

async fn follower_sync_tick(tick: Tick, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    let key = tick.get_timestamp().to_string();
    handlers::sweeps::follower_sync_sweep(&ctx, &key)
        .await
        .map(|_| ())
        .map_err(|e| logged(QueueName::FollowerSync, "sweep", e))
}

/// A worker name never used before in this process: apalis refuses a name still registered by a
/// previous run.
fn worker_name(what: &str) -> String {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!(
        "{what}-{host}-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every job type that runs on an apalis queue, with its handler: the one list every backend's
/// workers are registered from. `$worker` registers one (`store_worker!` or `redis_worker!`) on
/// `$monitor` with `$arg`s, and the monitor passes on to the next. The share job is registered on
/// its own: on the store's engines the share rows are its queue (`share_feed_worker!`).
macro_rules! queued_jobs {
    ($worker:ident, $monitor:expr $(, $arg:expr)*) => {{
        let m = $worker!($monitor $(, $arg)*, RefreshV1, refresh_job);
        $worker!(m $(, $arg)*, FollowerSyncV1, follower_sync_job)
    }};
}

/// One job type's worker on a store-backed queue (SQLite or Postgres): woken at once by pushes
/// from this process, and by a poll for pushes from others.
macro_rules! store_worker {
    ($monitor:expr, $q:expr, $ctx:expr, $wakeups:expr, $args:ty, $handler:expr) => {{
        let queue = <$args as Job>::QUEUE;
        let q = $q.clone();
        let ctx = $ctx.clone();
        let wakeups: Wakeups = $wakeups.clone();
        let concurrency = ctx.settings.concurrency;
        $monitor.register(move |_run: usize| {
            let strategy = Strategy::new()
                .stream(wakeups.stream(queue))
                .interval(FALLBACK_POLL);
            WorkerBuilder::new(worker_name(queue.as_str()))
                .backend(q.storage::<$args>(queue).poll_with_strategy(strategy))
                .data(ctx.clone())
                .catch_panic()
                .concurrency(concurrency)
                .build($handler)
        })
    }};
}

/// The share queue's worker on the store's own engines: the share rows are the queue.
macro_rules! share_feed_worker {
    ($monitor:expr, $ctx:expr, $wakeups:expr) => {{
        let ctx = $ctx.clone();
        let wake = $wakeups.share();
        let concurrency = ctx.settings.concurrency;
        $monitor.register(move |_run: usize| {
            let config = FeedConfig {
                lease: ctx.settings.lease,
                batch: concurrency.clamp(1, FEED_BATCH),
                poll: FALLBACK_POLL,
                lapsed_every: ctx.settings.reconcile_every,
            };
            WorkerBuilder::new(worker_name(QueueName::Share.as_str()))
                .backend(ShareFeed::new(ctx.store.clone(), wake.clone(), config))
                .data(ctx.clone())
                .catch_panic()
                .concurrency(concurrency)
                .build(claimed_share_job)
        })
    }};
}

/// The webhook delivery queue's worker, on every backend: the delivery rows are the queue
/// (`herald_jobs::webhooks::feed` says why).
macro_rules! webhook_feed_worker {
    ($monitor:expr, $ctx:expr) => {{
        let ctx = $ctx.clone();
        let concurrency = ctx.settings.concurrency;
        let client = webhooks::send::DeliveryClient::new(&ctx);
        $monitor.register(move |_run: usize| {
            let hooks = &ctx.settings.webhooks;
            let config = DeliveryFeedConfig {
                lease: hooks.lease(),
                batch: concurrency.clamp(1, FEED_BATCH),
                per_endpoint: hooks.per_endpoint.max(1),
                poll: FALLBACK_POLL,
                lapsed_every: ctx.settings.reconcile_every,
            };
            WorkerBuilder::new(worker_name("webhook"))
                .backend(DeliveryFeed::new(ctx.store.clone(), config))
                .data(ctx.clone())
                .data(client.clone())
                .catch_panic()
                .concurrency(concurrency)
                .build(webhook_delivery_job)
        })
    }};
}

/// One job type's worker on Herald's Redis backend, which blocks on its stream: no poll.
macro_rules! redis_worker {
    ($monitor:expr, $q:expr, $ctx:expr, $args:ty, $handler:expr) => {{
        let queue = <$args as Job>::QUEUE;
        let q = $q.inner().clone();
        let ctx = $ctx.clone();
        let concurrency = ctx.settings.concurrency;
        $monitor.register(move |_run: usize| {
            let config = q.config(queue.as_str()).lease(ctx.settings.lease);
            WorkerBuilder::new(worker_name(queue.as_str()))
                .backend(q.storage::<$args>(config))
                .data(ctx.clone())
                .catch_panic()
                .concurrency(concurrency)
                .build($handler)
        })
    }};
}

macro_rules! cron_worker {
    ($monitor:expr, $ctx:expr, $name:literal, $schedule:expr, $handler:expr) => {{
        let ctx = $ctx.clone();
        let schedule = cron::Schedule::from_str(&$schedule).map_err(|e| {
            anyhow::anyhow!(
                "the {} schedule `{}` is not a cron expression: {e}",
                $name,
                $schedule
            )
        })?;
        $monitor.register(move |_run: usize| {
            WorkerBuilder::new(worker_name($name))
                .backend(CronScheduler::new(schedule.clone()))
                .data(ctx.clone())
                .catch_panic()
                .build($handler)
        })
    }};
}

/// Runs every queue's worker, the sweeps and the reconciler until `shutdown` resolves, then waits
/// up to [`SHUTDOWN_TIMEOUT`] for jobs in flight.
pub async fn run(
    ctx: Ctx,
    backend: Backend,
    wakeups: Wakeups,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let monitor = Monitor::new()
        .should_restart(|_w, err| {
            tracing::warn!(error = %err, "worker stopped; restarting it");
            true
        })
        .shutdown_timeout(SHUTDOWN_TIMEOUT);
    let monitor = match &backend {
        Backend::Sqlite(q) => {
            let m = share_feed_worker!(monitor, ctx, wakeups);
            queued_jobs!(store_worker, m, q, ctx, wakeups)
        }
        Backend::Postgres(q) => {
            let m = share_feed_worker!(monitor, ctx, wakeups);
            queued_jobs!(store_worker, m, q, ctx, wakeups)
        }
        Backend::Redis(q) => {
            let m = redis_worker!(monitor, q, ctx, ShareV1, share_job);
            queued_jobs!(redis_worker, m, q, ctx)
        }
    };
    let monitor = webhook_feed_worker!(monitor, ctx);
    let monitor = cron_worker!(
        monitor,
        ctx,
        "refresh-sweep",
        ctx.settings.refresh_sweep_cron,
        refresh_tick
    );
    let monitor = cron_worker!(
        monitor,
        ctx,
        "follower-sync-sweep",
        ctx.settings.follower_sync_cron,
        follower_sync_tick
    );
    // On Redis the queue is apart from the store, and the reconciler re-delivers what it lost;
    // on the store's engines the share feed claims due and lapsed rows itself, and what is left
    // to keep in check is the other queues' finished jobs.
    let reconciler = AbortOnDrop(tokio::spawn(match &backend {
        Backend::Redis(_) => reconcile_forever(ctx.clone()).boxed(),
        Backend::Sqlite(q) => prune_forever(Pruner::Sqlite(q.pool().clone())).boxed(),
        Backend::Postgres(q) => prune_forever(Pruner::Postgres(q.pool().clone())).boxed(),
    }));
    let media_sweep = AbortOnDrop(tokio::spawn(prune_media_forever(ctx.clone())));
    for q in QueueName::ALL {
        metrics::gauge!(m::WORKERS_ALIVE, "queue" => q.as_str()).set(1.0);
    }
    let result = monitor
        .run_with_signal(async move {
            shutdown.await;
            Ok(())
        })
        .await;
    for q in QueueName::ALL {
        metrics::gauge!(m::WORKERS_ALIVE, "queue" => q.as_str()).set(0.0);
    }
    drop(reconciler);
    drop(media_sweep);
    result.map_err(|e| anyhow::anyhow!("worker monitor: {e}"))
}

async fn reconcile_forever(ctx: Ctx) {
    let mut tick = tokio::time::interval(ctx.settings.reconcile_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match handlers::reconcile::redeliver(&ctx).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(pushed = n, "reconciler re-delivered shares");
                metrics::counter!(m::SWEEP_RUNS_TOTAL, "sweep" => "reconcile", "result" => "redelivered").increment(1);
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reconciler run failed");
                metrics::counter!(m::SWEEP_RUNS_TOTAL, "sweep" => "reconcile", "result" => "error")
                    .increment(1);
            }
        }
    }
}

/// How long apalis's SQLite and Postgres backends keep a finished refresh or follower-sync job:
/// long enough that a sweep tick's idempotency key still drops a duplicate push from another
/// process, short enough that the table (and the cost of apalis's ack, which walks a worker's
/// jobs) stays bounded.
const FINISHED_JOB_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The most finished jobs deleted per statement, so a prune never holds the write lock for long.
const PRUNE_BATCH: i64 = 1000;
/// How often a worker process prunes: the retention is a day, so every few minutes is plenty,
/// and a `DELETE` takes SQLite's write lock even when it finds nothing.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The database holding apalis's job table.
enum Pruner {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Pruner {
    /// Deletes up to [`PRUNE_BATCH`] jobs finished before `before`; returns how many.
    async fn prune(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Self::Sqlite(p) => sqlx::query(
                "DELETE FROM Jobs WHERE rowid IN (SELECT rowid FROM Jobs \
                 WHERE status IN ('Done', 'Killed') AND done_at < ?1 LIMIT ?2)",
            )
            .bind(before.timestamp())
            .bind(PRUNE_BATCH)
            .execute(p)
            .await?
            .rows_affected(),
            Self::Postgres(p) => sqlx::query(
                "DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM apalis.jobs \
                 WHERE status IN ('Done', 'Killed') AND done_at < $1 LIMIT $2)",
            )
            .bind(before)
            .bind(PRUNE_BATCH)
            .execute(p)
            .await?
            .rows_affected(),
        })
    }
}

async fn prune_forever(pruner: Pruner) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before = chrono::Utc::now()
            - chrono::Duration::from_std(FINISHED_JOB_RETENTION).unwrap_or_default();
        loop {
            match pruner.prune(before).await {
                Ok(n) if n as i64 == PRUNE_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "pruning finished jobs failed");
                    break;
                }
            }
        }
    }
}

/// How long a captured image stays after its last use by an enqueue, even once no unfinished
/// share needs it: an enqueue writing a new use of it commits well within this, so the sweep
/// cannot delete a blob a share is about to reference.
const MEDIA_GRACE: Duration = Duration::from_secs(3600);

/// Every [`PRUNE_EVERY`], deletes the images no unfinished share needs (every backend: they live
/// in the store).
async fn prune_media_forever(ctx: Ctx) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before =
            chrono::Utc::now() - chrono::Duration::from_std(MEDIA_GRACE).unwrap_or_default();
        match ctx.store.prune_media(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed images no share needs"),
            Err(e) => tracing::warn!(error = %e, "pruning images failed"),
        }
    }
}

/// Aborts a spawned task when dropped, so background loops end with the worker.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
