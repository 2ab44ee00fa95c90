//! Gauges read at scrape time from the store: queue depth and age, connections, reauth population,
//! webhook endpoints disabled or failing.
//! Each query uses an index on active rows, so a scrape costs time in proportion to the work in
//! flight, not to history.

use chrono::Utc;
use herald_platforms::PlatformKind;

use crate::{Ctx, metrics as m, payloads::QueueName};

pub async fn refresh(ctx: &Ctx) -> anyhow::Result<()> {
    let now = Utc::now();
    let d = ctx.store.share_depth(now).await?;
    let share = QueueName::Share.as_str();
    for (state, n) in [
        ("ready", d.ready),
        ("scheduled", d.scheduled),
        ("running", d.running),
        ("parked", d.parked),
    ] {
        metrics::gauge!(m::QUEUE_DEPTH, "queue" => share, "state" => state).set(n as f64);
    }
    let age = d
        .oldest_ready
        .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
    metrics::gauge!(m::QUEUE_OLDEST_AGE_SECONDS, "queue" => share).set(age);

    let target = chrono::Duration::from_std(m::REAUTH_PROMPT_TARGET)?;
    let counts = ctx.store.connection_counts(now - target).await?;
    let failing = ctx
        .store
        .refresh_failing_counts(now - chrono::Duration::hours(24), 3)
        .await?;
    for kind in PlatformKind::ALL {
        let of_platform = || counts.iter().filter(|c| c.platform == kind.as_str());
        for auth in m::CONNECTION_AUTHS {
            // Only Bluesky has app passwords; the other platforms export `oauth` alone.
            if *auth != "oauth" && kind != PlatformKind::Bluesky {
                continue;
            }
            let live: i64 = of_platform()
                .filter(|c| c.auth == *auth)
                .map(|c| c.live)
                .sum();
            metrics::gauge!(m::CONNECTIONS, "platform" => kind.as_str(), "auth" => *auth)
                .set(live as f64);
        }
        let reauth: i64 = of_platform().map(|c| c.needing_reauth).sum();
        let overdue: i64 = of_platform().map(|c| c.flagged_before).sum();
        metrics::gauge!(m::CONNECTIONS_NEEDING_REAUTH, "platform" => kind.as_str())
            .set(reauth as f64);
        metrics::gauge!(m::CONNECTIONS_NEEDING_REAUTH_OVER_48H, "platform" => kind.as_str())
            .set(overdue as f64);
        let f = failing
            .iter()
            .find(|(p, _)| p == kind.as_str())
            .map_or(0, |(_, n)| *n);
        metrics::gauge!(m::CONNECTIONS_REFRESH_FAILING, "platform" => kind.as_str()).set(f as f64);
    }

    let (disabled, failing) = ctx
        .store
        .webhook_endpoint_counts(now - chrono::Duration::hours(1))
        .await?;
    metrics::gauge!(m::WEBHOOK_ENDPOINTS_DISABLED).set(disabled as f64);
    metrics::gauge!(m::WEBHOOK_ENDPOINTS_FAILING_OVER_1H).set(failing as f64);
    Ok(())
}
