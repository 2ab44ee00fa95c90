use std::sync::Arc;

use tokio::sync::watch;

use super::reclaim_call;
use crate::consumer::Shared;
use crate::error::is_transient;

/// Renews this worker's lease and takes back the jobs of workers whose lease lapsed,
/// every heartbeat interval, in one script call.
pub(super) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = shared.config.heartbeat_every();
    loop {
        match reclaim_call(&shared, "beat").await {
            Ok((moved, buried, more)) => {
                shared.mark_healthy(true);
                if moved > 0 || buried > 0 {
                    tracing::info!(queue = %shared.config.queue, moved, buried, "recovered jobs of lapsed workers");
                }
                if more == 1 {
                    continue;
                }
            }
            Err(e) => {
                if is_transient(&e) {
                    shared.mark_healthy(false);
                }
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}
