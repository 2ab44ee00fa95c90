//! The background side of a worker: one fetcher (blocking reads on a dedicated
//! connection), one acker and one heartbeat task, started on the first poll.

use serde::de::DeserializeOwned;
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    Config, RedisConn,
    ack::{AckMsg, run_acker},
    keys::{GROUP, Keys},
    scripts,
};

mod fetcher;
mod heartbeat;

/// What the worker's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub conn: RedisConn,
    pub keys: Keys,
    pub config: Config,
    /// Consumer name in the stream group: the worker name plus a per-start suffix, so a
    /// restarted process that reuses a name never inherits the deliveries of the old one.
    pub consumer: String,
    pub healthy: Arc<AtomicBool>,
    /// Entry ids delivered to this process and not yet settled. After a reconnect, the
    /// consumer's other pending entries are reads whose reply was lost with the connection:
    /// the lease is renewed for the whole consumer, so only this tells them apart.
    pub held: Mutex<HashSet<Arc<str>>>,
}

impl Shared {
    pub fn hold(&self, entry_id: &Arc<str>) {
        self.held.lock().expect("held set").insert(entry_id.clone());
    }

    pub fn holds(&self, entry_id: &str) -> bool {
        self.held.lock().expect("held set").contains(entry_id)
    }

    pub fn settled<'a>(&self, entry_ids: impl IntoIterator<Item = &'a str>) {
        let mut held = self.held.lock().expect("held set");
        for id in entry_ids {
            held.remove(id);
        }
    }

    pub fn mark_healthy(&self, up: bool) {
        if self.healthy.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(queue = %self.config.queue, "redis reachable again");
            } else {
                tracing::warn!(queue = %self.config.queue, "redis unreachable; retrying");
            }
        }
    }
}

/// Delays between reconnection attempts: 50 ms doubling to 5 s, jittered, forever.
pub(crate) fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter_seed(seed)
        .without_max_times()
        .build()
}

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
