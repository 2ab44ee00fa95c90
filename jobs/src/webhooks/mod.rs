//! Signed lifecycle webhooks: what happened to a tenant's shares and connections, told to the
//! tenant's endpoints (issue 15).
//!
//! - [`event`]: the event types and the body of each event, built from the row whose change
//!   caused it. The store writes it to the outbox (`webhook_events`, with one
//!   `webhook_deliveries` row per subscribed endpoint) in the same transaction as that change
//!   (`store/webhooks.rs`).
//! - [`feed`]: the delivery queue. The delivery rows are the queue on every backend: a fetcher
//!   claims due rows under a lease, at most a few per endpoint at a time, and never one whose
//!   subject (share, connection) has an earlier event still undelivered to that endpoint.
//! - [`send`]: one attempt: the SSRF guard, Standard Webhooks signing ([`signing`]), a POST
//!   bounded in time and in the response read, and the outcome recorded with the next attempt
//!   on Svix's schedule ([`schedule`]).
//! - [`endpoints`]: creating, changing and rotating endpoints (the API's domain side).

pub mod endpoints;
pub mod event;
pub mod feed;
pub mod schedule;
pub mod send;
pub mod signing;

use std::sync::LazyLock;

use tokio::sync::watch;

pub use event::{EventType, NewEvent};

/// The Postgres channel a trigger notifies when a delivery becomes pending.
pub const CHANNEL: &str = "herald_webhook_due";

/// Wakes this process's delivery feeds. Called after a commit that may have written a delivery;
/// a wake-up with nothing to do costs a feed one cheap read. Process-wide rather than per store:
/// the writers (deep in the store's transactions) have no handle on the worker, and a spurious
/// wake-up is harmless. A `watch` rather than a `Notify`, so every feed of the process (the tests
/// run many) sees it, and none is lost between a claim and the sleep after it.
pub(crate) fn wake() {
    DUE.send_modify(|n| *n = n.wrapping_add(1));
}

/// What a feed waits on for [`wake`].
pub(crate) fn wakeups() -> watch::Receiver<u64> {
    DUE.subscribe()
}

static DUE: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);
