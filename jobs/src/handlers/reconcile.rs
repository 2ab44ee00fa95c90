//! The reconciler, for a queue kept apart from the store (Redis): the store is the durable
//! record, so any share whose delivery may have been lost (the push after a commit failed, a
//! worker was killed mid-call, a queue lost a job) is pushed again. Its delivery key makes the
//! push a no-op while the original is pending (the queue releases the key once the job is
//! settled, so a key is never burned), and the claim's compare-and-set makes a duplicate delivery
//! harmless. Running it in every worker process at once is safe for the same reasons. On the
//! store's own engines the share feed claims due and lapsed rows itself and needs no reconciler.

use chrono::Utc;

use crate::{Ctx, payloads::ShareV1, store::ShareState};

/// Pushes again every share that is overdue or whose lease lapsed. Returns how many jobs it
/// enqueued (a push dropped as a duplicate of a pending job does not count).
pub async fn redeliver(ctx: &Ctx) -> anyhow::Result<usize> {
    let now = Utc::now();
    let grace = chrono::Duration::from_std(ctx.settings.redelivery_grace)?;
    let rows = ctx
        .store
        .shares_needing_delivery(now, now - grace, 500)
        .await?;
    let mut pushed = 0;
    for row in rows {
        let key = match row.state()? {
            ShareState::Running => format!(
                "{}:lease:{}",
                row.delivery_key(),
                row.lease_until.map_or(0, |t| t.timestamp_millis())
            ),
            _ => row.delivery_key(),
        };
        let job = ShareV1 {
            share_id: row.id.clone(),
        };
        if ctx.queue.enqueue(&job, now, &key).await? {
            pushed += 1;
        }
    }
    Ok(pushed)
}
