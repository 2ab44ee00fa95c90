#![doc = include_str!("../README.md")]

use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use apalis::prelude::*;
use apalis_core::backend::ext::{BackendExt, poll_strategy::Strategy};
use herald_jobs::{
    Ctx, handlers, metrics as m,
    payloads::{QueueName, ShareV1},
    queue::{PostgresQueue, RedisJobQueue, SqliteQueue, Wakeups},
};
use tokio_util_shim::CancelOnDrop;

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

async fn share_job(job: ShareV1, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    handlers::share::run(&ctx, &job).await.map_err(|e| {
        tracing::error!(share.id = %job.share_id, error = %format!("{e:#}"), "share job failed; the reconciler will deliver it again");
        e.into()
    })
}

/// A worker name never used before in this process: apalis refuses a name still registered by a
/// previous run.
fn worker_name(queue: QueueName) -> String {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!(
        "{}-{host}-{}-{}",
        queue.as_str(),
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    )
}

macro_rules! share_worker {
    ($storage:expr, $ctx:expr, $wakeups:expr) => {{
        let ctx = $ctx.clone();
        let wakeups: Wakeups = $wakeups.clone();
        let concurrency = ctx.settings.concurrency;
        move |_run: usize| {
            let strategy = Strategy::new()
                .stream(wakeups.stream(QueueName::Share))
                .interval(FALLBACK_POLL);
            WorkerBuilder::new(worker_name(QueueName::Share))
                .backend($storage.poll_with_strategy(strategy))
                .data(ctx.clone())
                .catch_panic()
                .concurrency(concurrency)
                .build(share_job)
        }
    }};
}

/// Runs the workers and the reconciler until `shutdown` resolves, then waits up to
/// [`SHUTDOWN_TIMEOUT`] for jobs in flight.
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
            let q = q.clone();
            monitor.register(share_worker!(
                q.storage::<ShareV1>(QueueName::Share),
                ctx,
                wakeups
            ))
        }
        Backend::Postgres(q) => {
            let q = q.clone();
            monitor.register(share_worker!(
                q.storage::<ShareV1>(QueueName::Share),
                ctx,
                wakeups
            ))
        }
        Backend::Redis(q) => {
            let q = q.inner().clone();
            let ctx = ctx.clone();
            let concurrency = ctx.settings.concurrency;
            // The Redis backend blocks on its stream and wakes on push in every process: no poll.
            monitor.register(move |_run: usize| {
                let config = q.config(QueueName::Share.as_str()).lease(ctx.settings.lease);
                WorkerBuilder::new(worker_name(QueueName::Share))
                    .backend(q.storage::<ShareV1>(config))
                    .data(ctx.clone())
                    .catch_panic()
                    .concurrency(concurrency)
                    .build(share_job)
            })
        }
    };
    let reconciler = CancelOnDrop(tokio::spawn(reconcile_forever(ctx.clone())));
    metrics::gauge!(m::WORKERS_ALIVE, "queue" => QueueName::Share.as_str()).set(1.0);
    let result = monitor
        .run_with_signal(async move {
            shutdown.await;
            Ok(())
        })
        .await;
    metrics::gauge!(m::WORKERS_ALIVE, "queue" => QueueName::Share.as_str()).set(0.0);
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

mod tokio_util_shim {
    /// Aborts a spawned task when dropped, so background loops end with the worker.
    pub struct CancelOnDrop<T>(pub tokio::task::JoinHandle<T>);

    impl<T> Drop for CancelOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
}
