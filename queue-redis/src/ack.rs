//! Acknowledgement: a tower layer reports each finished delivery to one task that settles
//! them in batches, one script call per batch.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::{error::BoxDynError, task::Task, task::status::Status};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tower_layer::Layer;
use tower_service::Service;

use crate::{consumer::Shared, error::is_transient, keys::GROUP, scripts};

/// Where a delivery came from; travels in the task's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub entry_id: Arc<str>,
    pub job_id: Arc<str>,
    /// The idempotency key the job was pushed with (field `k`), released when it settles.
    pub idem_key: Option<Arc<str>>,
}

#[derive(Debug)]
pub(crate) enum Outcome {
    Done,
    Retry { attempts: usize, error: String },
    Dead { attempts: usize, error: String },
}

#[derive(Debug)]
pub(crate) struct Settlement {
    pub delivery: Delivery,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub(crate) enum AckMsg {
    Settle(Settlement),
    /// Answered once every message sent before it is written to Redis.
    Flush(oneshot::Sender<()>),
}

/// The backend's middleware: reports each task's outcome once the handler (and any
/// in-process retry layer) is done with it. Unbounded, so a finishing task never waits
/// for Redis (a bounded ack channel is how stock apalis deadlocks at shutdown).
#[derive(Debug, Clone)]
pub struct AckLayer {
    tx: mpsc::UnboundedSender<AckMsg>,
    max_attempts: usize,
}

impl AckLayer {
    pub(crate) fn new(tx: mpsc::UnboundedSender<AckMsg>, max_attempts: usize) -> Self {
        Self { tx, max_attempts }
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            tx: self.tx.clone(),
            max_attempts: self.max_attempts,
        }
    }
}

/// See [`AckLayer`].
#[derive(Debug, Clone)]
pub struct AckService<S> {
    inner: S,
    tx: mpsc::UnboundedSender<AckMsg>,
    max_attempts: usize,
}

impl<S, Args> Service<Task<Args>> for AckService<S>
where
    S: Service<Task<Args>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    S::Response: Send + 'static,
    Args: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let ctx = task.ctx().clone();
        let delivery = ctx.data().get::<Delivery>().cloned();
        let fut = self.inner.call(task);
        let tx = self.tx.clone();
        let max_attempts = self.max_attempts;
        Box::pin(async move {
            let res = fut.await.map_err(Into::into);
            if let Some(delivery) = delivery {
                // the lifecycle layer inside us has counted the runs and set the status
                let attempts = ctx.attempt();
                let outcome = match &res {
                    Ok(_) => Outcome::Done,
                    Err(e) if ctx.status() == Status::Killed || attempts >= max_attempts => {
                        Outcome::Dead {
                            attempts,
                            error: e.to_string(),
                        }
                    }
                    Err(e) => Outcome::Retry {
                        attempts,
                        error: e.to_string(),
                    },
                };
                if tx
                    .send(AckMsg::Settle(Settlement { delivery, outcome }))
                    .is_err()
                {
                    tracing::warn!(
                        "ack channel closed; the job's lease will lapse and it will run again"
                    );
                }
            }
            res
        })
    }
}

/// Settles deliveries until every sender is gone.
pub(crate) async fn run_acker(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<AckMsg>) {
    let max = shared.config.ack_batch;
    let mut batch = Vec::with_capacity(max);
    let mut flushes = Vec::new();
    while let Some(msg) = rx.recv().await {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg {
                AckMsg::Settle(s) => batch.push(s),
                AckMsg::Flush(done) => flushes.push(done),
            }
            if batch.len() < max {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            settle(&shared, &batch).await;
            shared.settled(batch.iter().map(|s| &*s.delivery.entry_id));
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes one batch, retrying while Redis is unreachable: an ack is never dropped for a
/// connection problem. Other errors are retried a few times, then logged.
async fn settle(shared: &Shared, batch: &[Settlement]) {
    let keys = &shared.keys;
    let cfg = &shared.config;
    // the script decides on the same number whether successes carry their job id
    let done_ttl = cfg.done_retention.as_secs();
    let mut call = scripts::ACK.prepare_invoke();
    call.key(&keys.stream)
        .key(&keys.scheduled)
        .key(&keys.scheduled_jobs)
        .key(&keys.dead)
        .key(&keys.wake)
        .arg(GROUP)
        .arg(&keys.base)
        .arg(done_ttl)
        .arg(cfg.dead_retention.as_secs())
        .arg(cfg.retry_delay.as_millis() as u64)
        .arg(cfg.idempotency_ttl.as_secs());
    // successes without an idempotency key are settled in bulk, by entry id alone; those
    // with one release it, one by one
    let done = || batch.iter().filter(|s| matches!(s.outcome, Outcome::Done));
    let keyed = done().filter(|s| s.delivery.idem_key.is_some()).count();
    call.arg(done().count() - keyed).arg(keyed);
    for s in done().filter(|s| s.delivery.idem_key.is_none()) {
        call.arg(&*s.delivery.entry_id);
        if done_ttl > 0 {
            call.arg(&*s.delivery.job_id);
        }
    }
    for s in done() {
        if let Some(key) = &s.delivery.idem_key {
            call.arg(&*s.delivery.entry_id)
                .arg(&*s.delivery.job_id)
                .arg(&**key);
        }
    }
    for s in batch {
        let (code, attempts, error) = match &s.outcome {
            Outcome::Done => continue,
            Outcome::Retry { attempts, error } => ("r", *attempts, error.as_str()),
            Outcome::Dead { attempts, error } => ("d", *attempts, error.as_str()),
        };
        call.arg(&*s.delivery.entry_id)
            .arg(&*s.delivery.job_id)
            .arg(code)
            .arg(attempts)
            .arg(error);
    }
    let mut delay = Duration::from_millis(50);
    let mut failures = 0;
    loop {
        let mut conn = shared.conn.shared();
        match call.invoke_async::<i64>(&mut conn).await {
            Ok(_) => {
                shared.mark_healthy(true);
                return;
            }
            Err(e) => {
                failures += 1;
                let transient = is_transient(&e);
                if transient {
                    shared.mark_healthy(false);
                }
                if !transient && failures >= 5 {
                    tracing::error!(error = %e, jobs = batch.len(), "giving up on acknowledging jobs; their leases will lapse");
                    return;
                }
                tracing::warn!(error = %e, jobs = batch.len(), retry_in = ?delay, "acknowledging jobs failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
