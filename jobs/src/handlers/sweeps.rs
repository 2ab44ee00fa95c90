//! Scheduled sweeps. Every worker process runs the cron; the store's `sweep_ticks` row makes
//! exactly one of them run each tick, and each enqueue carries a per-tick key, so a sweep runs
//! once per tick however many workers run.

use chrono::Utc;
use herald_platforms::PlatformKind;

use crate::{Ctx, metrics as m, payloads::RefreshV1, store::DueFor};

const PAGE: i64 = 500;

fn counted(
    sweep: &'static str,
    result: anyhow::Result<Option<usize>>,
) -> anyhow::Result<Option<usize>> {
    let label = match &result {
        Ok(Some(_)) => "ran",
        Ok(None) => "skipped",
        Err(_) => "error",
    };
    metrics::counter!(m::SWEEP_RUNS_TOTAL, "sweep" => sweep, "result" => label).increment(1);
    result
}

/// Enqueues a refresh for every connection whose token expires within the window. `None` when
/// another process already ran this tick. The query reads the partial index on expiry, so its cost
/// follows the number of due connections, not all connections.
pub async fn refresh_sweep(ctx: &Ctx, tick: &str) -> anyhow::Result<Option<usize>> {
    counted(
        "refresh",
        async {
            let now = Utc::now();
            if !ctx.store.claim_sweep_tick("refresh", tick, now).await? {
                return Ok(None);
            }
            let windows = [
                (DueFor::Refreshable, ctx.settings.refresh_window),
                // Meta's 60-day tokens are renewed days ahead, so an outage at Meta or here has
                // days to pass, not the two hours of the refresh window.
                (DueFor::LongLived, ctx.settings.long_lived_refresh_window),
            ];
            let mut pushed = 0;
            for (due_for, window) in windows {
                let before = now + chrono::Duration::from_std(window)?;
                let mut after = None;
                loop {
                    let due = ctx
                        .store
                        .connections_due_for_refresh(due_for, before, after.as_ref(), PAGE)
                        .await?;
                    let Some((last, _, last_at)) = due.last().cloned() else {
                        break;
                    };
                    for (id, platform, _) in &due {
                        // A refresh already queued or running (asked for through the API, or a
                        // retry) is the one pushed: one run, and one job per run, so a
                        // connection due in both passes is queued once.
                        let run = ctx.store.queue_refresh_run(id, platform, now).await?;
                        let job = RefreshV1 {
                            connection_id: id.clone(),
                            retry: 0,
                            run: Some(run.id.clone()),
                        };
                        ctx.queue
                            .enqueue(&job, now, &super::refresh::run_key(&run.id))
                            .await?;
                        pushed += 1;
                    }
                    if (due.len() as i64) < PAGE {
                        break;
                    }
                    after = Some((last_at, last));
                }
            }
            tracing::info!(sweep = "refresh", tick, pushed, "sweep ran");
            Ok(Some(pushed))
        }
        .await,
    )
}

/// Enqueues a follower sync for every live connection of a platform that lists followers.
pub async fn follower_sync_sweep(ctx: &Ctx, tick: &str) -> anyhow::Result<Option<usize>> {
    counted(
        "follower_sync",
        async {
            let now = Utc::now();
            if !ctx
                .store
                .claim_sweep_tick("follower_sync", tick, now)
                .await?
            {
                return Ok(None);
            }
            let mut pushed = 0;
            for kind in PlatformKind::ALL {
                if !ctx
                    .platforms
                    .get(kind)
                    .is_some_and(|p| p.capabilities().followers)
                {
                    continue;
                }
                let mut after: Option<String> = None;
                loop {
                    let ids = ctx
                        .store
                        .connections_of_platform(kind.as_str(), after.as_deref(), PAGE)
                        .await?;
                    for id in &ids {
                        // A sync already queued or paused is pushed again under this tick's
                        // key: it goes on now, as a sweep's sync always resumed a paused one.
                        super::follower_sync::queue_sync(
                            ctx,
                            id,
                            now,
                            Some(&format!("follower_sync:{id}:{tick}")),
                        )
                        .await?;
                        pushed += 1;
                    }
                    if (ids.len() as i64) < PAGE {
                        break;
                    }
                    after = ids.last().cloned();
                }
            }
            tracing::info!(sweep = "follower_sync", tick, pushed, "sweep ran");
            Ok(Some(pushed))
        }
        .await,
    )
}
