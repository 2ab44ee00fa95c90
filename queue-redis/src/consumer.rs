//! What one worker's background tasks (fetcher, acker, heartbeat) share: the connection, the
//! consumer's name in the stream group, and the deliveries it holds. Its own module so that the
//! acker and the worker's tasks each depend on it, rather than on one another.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::{Config, RedisConn, keys::Keys};

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
