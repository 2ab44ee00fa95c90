//! Runtime settings shared by the API and the workers. The binary reads them once from the
//! environment (see `.env.example`); tests build them directly.

use std::time::Duration;

use crate::{retry::RetryPolicy, ssrf::SsrfGuard};

#[derive(Debug, Clone)]
pub struct Settings {
    pub retry: RetryPolicy,
    /// The longest one platform HTTP call may take.
    pub platform_timeout: Duration,
    /// How long a worker holds a share before another may take it over. Longer than
    /// `platform_timeout`, so a live worker never loses its lease mid-call.
    pub lease: Duration,
    /// A share not run within this long after it was due expires (unless the request sets its own).
    pub share_lateness: Duration,
    /// A share due for longer than this without being picked up is pushed to the queue again.
    pub redelivery_grace: Duration,
    /// How often the reconciler looks for lost deliveries and lapsed leases.
    pub reconcile_every: Duration,
    /// Jobs one worker runs at once, per queue.
    pub concurrency: usize,
    pub ssrf: SsrfGuard,
    /// A token expiring within this long is refreshed before a call uses it.
    pub refresh_skew: Duration,
    /// The refresh sweep enqueues connections whose tokens expire within this window.
    pub refresh_window: Duration,
    /// Cron expressions (with seconds) of the sweeps.
    pub refresh_sweep_cron: String,
    pub follower_sync_cron: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            platform_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(90),
            share_lateness: Duration::from_secs(24 * 3600),
            redelivery_grace: Duration::from_secs(120),
            reconcile_every: Duration::from_secs(30),
            concurrency: 16,
            ssrf: SsrfGuard::strict(),
            refresh_skew: Duration::from_secs(300),
            refresh_window: Duration::from_secs(2 * 3600),
            refresh_sweep_cron: "0 */30 * * * *".into(),
            follower_sync_cron: "0 15 3 * * *".into(),
        }
    }
}
