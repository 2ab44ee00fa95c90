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
use herald_jobs::{
    Ctx, handlers, metrics as m,
    payloads::{FollowerSyncV1, QueueName, RefreshV1, ShareV1},
    queue::{PostgresQueue, RedisJobQueue, SqliteQueue, Wakeups},
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

/// A failed job is logged once here; its row keeps its state and the reconciler or the next
/// sweep picks it up again.
fn logged(queue: QueueName, id: &str, e: anyhow::Error) -> BoxDynError {
    tracing::error!(queue = queue.as_str(), job.subject = %id, error = %format!("{e:#}"), "job failed");
    e.into()
}

async fn share_job(job: ShareV1, id: TaskId, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    handlers::share::run(&ctx, &job, &id.to_string())
        .await
        .map_err(|e| logged(QueueName::Share, &job.share_id, e))
}

async fn refresh_job(job: RefreshV1, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    handlers::refresh::run(&ctx, &job)
        .await
        .map_err(|e| logged(QueueName::Refresh, &job.connection_id, e))
}

async fn follower_sync_job(job: FollowerSyncV1, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    handlers::follower_sync::run(&ctx, &job)
        .await
        .map_err(|e| logged(QueueName::FollowerSync, &job.connection_id, e))
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

/// One queue's worker on a store-backed queue (SQLite or Postgres): woken at once by pushes from
/// this process, and by a poll for pushes from others.
macro_rules! store_worker {
    ($monitor:expr, $q:expr, $ctx:expr, $wakeups:expr, $queue:expr, $args:ty, $handler:expr) => {{
        let q = $q.clone();
        let ctx = $ctx.clone();
        let wakeups: Wakeups = $wakeups.clone();
        let concurrency = ctx.settings.concurrency;
        $monitor.register(move |_run: usize| {
            let strategy = Strategy::new()
                .stream(wakeups.stream($queue))
                .interval(FALLBACK_POLL);
            WorkerBuilder::new(worker_name($queue.as_str()))
                .backend(q.storage::<$args>($queue).poll_with_strategy(strategy))
                .data(ctx.clone())
                .catch_panic()
                .concurrency(concurrency)
                .build($handler)
        })
    }};
}

/// One queue's worker on Herald's Redis backend, which blocks on its stream: no poll.
macro_rules! redis_worker {
    ($monitor:expr, $q:expr, $ctx:expr, $queue:expr, $args:ty, $handler:expr) => {{
        let q = $q.inner().clone();
        let ctx = $ctx.clone();
        let concurrency = ctx.settings.concurrency;
        $monitor.register(move |_run: usize| {
            let config = q.config($queue.as_str()).lease(ctx.settings.lease);
            WorkerBuilder::new(worker_name($queue.as_str()))
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
            let m = store_worker!(
                monitor,
                q,
                ctx,
                wakeups,
                QueueName::Share,
                ShareV1,
                share_job
            );
            let m = store_worker!(
                m,
                q,
                ctx,
                wakeups,
                QueueName::Refresh,
                RefreshV1,
                refresh_job
            );
            store_worker!(
                m,
                q,
                ctx,
                wakeups,
                QueueName::FollowerSync,
                FollowerSyncV1,
                follower_sync_job
            )
        }
        Backend::Postgres(q) => {
            let m = store_worker!(
                monitor,
                q,
                ctx,
                wakeups,
                QueueName::Share,
                ShareV1,
                share_job
            );
            let m = store_worker!(
                m,
                q,
                ctx,
                wakeups,
                QueueName::Refresh,
                RefreshV1,
                refresh_job
            );
            store_worker!(
                m,
                q,
                ctx,
                wakeups,
                QueueName::FollowerSync,
                FollowerSyncV1,
                follower_sync_job
            )
        }
        Backend::Redis(q) => {
            let m = redis_worker!(monitor, q, ctx, QueueName::Share, ShareV1, share_job);
            let m = redis_worker!(m, q, ctx, QueueName::Refresh, RefreshV1, refresh_job);
            redis_worker!(
                m,
                q,
                ctx,
                QueueName::FollowerSync,
                FollowerSyncV1,
                follower_sync_job
            )
        }
    };
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
    let reconciler = AbortOnDrop(tokio::spawn(reconcile_forever(ctx.clone())));
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

/// Aborts a spawned task when dropped, so background loops end with the worker.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
