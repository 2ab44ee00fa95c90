//! The reconciler: the store is the durable record, so any share whose delivery may have been
//! lost (the push after a commit failed, a worker was killed mid-call, a queue lost a job) is
//! pushed again. Its delivery key makes the push a no-op where the original is still queued, and
//! the claim's compare-and-set makes a duplicate delivery harmless. Running it in every worker
//! process at once is safe for the same reasons.

use chrono::Utc;

use crate::{
    Ctx,
    payloads::{QueueName, ShareV1},
    store::ShareState,
};

/// Pushes again every share that is overdue or whose lease lapsed. Returns how many it pushed.
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
        let payload = serde_json::to_value(ShareV1 {
            share_id: row.id.clone(),
        })?;
        ctx.queue.push(QueueName::Share, payload, now, &key).await?;
        pushed += 1;
    }
    Ok(pushed)
}
