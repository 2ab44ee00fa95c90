//! The background side of a worker: one fetcher (blocking reads on a dedicated
//! connection), one acker and one heartbeat task, started on the first poll.

use serde::de::DeserializeOwned;
use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    ack::{AckMsg, run_acker},
    consumer::{Shared, reconnect_backoff},
    keys::GROUP,
    scripts,
};

mod fetcher;
mod heartbeat;

/// Running background tasks of one worker.
pub(crate) struct Runtime<T> {
    pub tasks: mpsc::Receiver<apalis_core::task::Task<T>>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    fetcher: Option<JoinHandle<()>>,
    heartbeat: Option<JoinHandle<()>>,
    acks: mpsc::UnboundedSender<AckMsg>,
}

impl<T: DeserializeOwned + Send + 'static> Runtime<T> {
    pub fn start(
        shared: Arc<Shared>,
        acks: mpsc::UnboundedSender<AckMsg>,
        ack_rx: mpsc::UnboundedReceiver<AckMsg>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (task_tx, tasks) = mpsc::channel(shared.config.prefetch);
        tokio::spawn(run_acker(shared.clone(), ack_rx));
        let heartbeat = tokio::spawn(heartbeat::run(shared.clone(), stop_rx.clone()));
        let fetcher = tokio::spawn(fetcher::run::<T>(
            shared.clone(),
            task_tx,
            acks.clone(),
            stop_rx,
        ));
        Self {
            tasks,
            shared,
            stop,
            fetcher: Some(fetcher),
            heartbeat: Some(heartbeat),
            acks,
        }
    }
}

impl<T: Send + 'static> Runtime<T> {
    /// Stops fetching, writes every pending ack, and gives the deliveries this worker
    /// holds but never started back to the stream, so shutdown loses and delays nothing.
    pub fn close(mut self) -> impl Future<Output = ()> + Send + 'static {
        let _ = self.stop.send(true);
        let fetcher = self.fetcher.take();
        let heartbeat = self.heartbeat.take();
        let acks = self.acks.clone();
        let shared = self.shared.clone();
        // prefetched tasks are dropped here; the release below gives them back
        self.tasks.close();
        async move {
            if let Some(f) = fetcher {
                let _ = f.await;
            }
            if let Some(h) = heartbeat {
                let _ = h.await;
            }
            let (done, flushed) = oneshot::channel();
            if acks.send(AckMsg::Flush(done)).is_ok() {
                let _ = flushed.await;
            }
            release(&shared).await;
            drop(self);
        }
    }
}

impl<T> Drop for Runtime<T> {
    fn drop(&mut self) {
        // without a clean close the heartbeat must stop, so the leases lapse
        let _ = self.stop.send(true);
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

async fn release(shared: &Shared) {
    let mut delays = reconnect_backoff();
    let mut failures = 0;
    loop {
        match reclaim_call(shared, "release").await {
            Ok((moved, _, more)) => {
                if moved > 0 {
                    tracing::debug!(moved, consumer = %shared.consumer, "released prefetched jobs");
                }
                if more == 0 {
                    return;
                }
            }
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    tracing::warn!(error = %e, "could not release prefetched jobs; they return when the lease lapses");
                    return;
                }
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
            }
        }
    }
}

pub(crate) async fn reclaim_call(
    shared: &Shared,
    mode: &str,
) -> Result<(i64, i64, i64), redis::RedisError> {
    let cfg = &shared.config;
    let keys = &shared.keys;
    scripts::RECLAIM
        .key(&keys.stream)
        .key(&keys.workers)
        .key(&keys.dead)
        .key(&keys.wake)
        .arg(GROUP)
        .arg(&keys.base)
        .arg(&shared.consumer)
        .arg(cfg.lease.as_millis() as u64)
        .arg(cfg.max_attempts)
        .arg(cfg.dead_retention.as_secs())
        .arg(500)
        .arg(mode)
        .invoke_async(&mut shared.conn.shared())
        .await
}
