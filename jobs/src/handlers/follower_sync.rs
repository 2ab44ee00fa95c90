//! One follower sync: both relations of a connection, page by page from the run's checkpoint.
//! Memory is one page; a crash repeats at most one page; a rate limit or an outage pauses the run
//! and the job comes back later to resume it. A sync is queued as a run per relation before its
//! job is pushed (`queue_sync`), and the job names the first, so a sync already done is not run
//! again by a second delivery of its job.

use anyhow::Context as _;
use chrono::Utc;
use herald_platforms::{PlatformError, Relation};
use tracing::{info, warn};

use crate::{
    Ctx, metrics as m,
    payloads::FollowerSyncV1,
    store::{QueuedRun, SyncRunState},
};

const QUEUE: &str = "follower_sync";

/// The relations a sync walks, in order, by their stored names.
const RELATIONS: [(Relation, &str); 2] = [
    (Relation::Followers, "followers"),
    (Relation::Follows, "follows"),
];

/// The push key of a queued sync: one job per sync.
pub fn run_key(run: &str) -> String {
    format!("follower_sync:run:{run}")
}

/// Queues a follower sync of a connection due at `due`, or finds the one already queued or
/// running (paused included), and pushes the job of a new one. `key_if_found` pushes a job for a
/// sync found open too, under that key (the sweep's: a paused or lost sync goes on); `None`
/// pushes nothing for it (the API: a second request queues nothing).
pub async fn queue_sync(
    ctx: &Ctx,
    connection_id: &str,
    due: chrono::DateTime<Utc>,
    key_if_found: Option<&str>,
) -> anyhow::Result<QueuedRun> {
    let relations = RELATIONS.map(|(_, name)| name);
    let queued = ctx
        .store
        .queue_sync_runs(connection_id, &relations, due)
        .await?;
    let key = if queued.created {
        run_key(&queued.id)
    } else if let Some(key) = key_if_found {
        key.to_owned()
    } else {
        return Ok(queued);
    };
    let job = FollowerSyncV1 {
        connection_id: connection_id.to_owned(),
        resume: false,
        retry: 0,
        run: Some(queued.id.clone()),
    };
    if let Err(e) = ctx.queue.enqueue(&job, due, &key).await {
        if queued.created {
            // Nothing will run it: end it so the next request queues one again.
            ctx.store
                .skip_open_sync_runs(connection_id, "the job could not be queued", Utc::now())
                .await?;
        }
        return Err(e.into());
    }
    Ok(queued)
}

pub async fn run(ctx: &Ctx, job: &FollowerSyncV1) -> anyhow::Result<()> {
    let Some(conn) = ctx.store.connection(&job.connection_id).await? else {
        return Ok(());
    };
    if let Some(id) = &job.run
        && ctx.store.sync_run_state(id).await? == SyncRunState::Done
    {
        return Ok(()); // an earlier delivery of this job ran its sync
    }
    if conn.revoked_at.is_some() {
        ctx.store
            .skip_open_sync_runs(&conn.id, "the connection was removed", Utc::now())
            .await?;
        return Ok(());
    }
    let Some(platform) = conn.platform_kind().and_then(|k| ctx.platforms.get(k)) else {
        return Ok(());
    };
    let platform_name = conn.platform.clone();
    if let Some(reason) = ctx.settings.bluesky.app_passwords.refuses(&conn) {
        ctx.store
            .mark_needs_reauth(&conn.id, reason, chrono::Utc::now())
            .await?;
    }
    if conn.needs_reauth || ctx.settings.bluesky.app_passwords.refuses(&conn).is_some() {
        metrics::counter!(m::JOBS_PARKED_TOTAL, "queue" => QUEUE, "platform" => platform_name)
            .increment(1);
        return Ok(());
    }
    if !platform.capabilities().followers {
        ctx.store
            .skip_open_sync_runs(&conn.id, "this platform lists no followers", Utc::now())
            .await?;
        return Ok(());
    }
    let creds = conn.credentials(&ctx.vault).context("decrypting tokens")?;
    let account = conn.account();
    let mut resumed = false;
    for (relation, rel) in RELATIONS {
        // A resume continues the paused run and the relations after it; those before it finished.
        let mut run = match (
            job.resume && !resumed,
            ctx.store.find_open_sync_run(&conn.id, rel).await?,
        ) {
            (_, Some(run)) => run,
            (true, None) => continue,
            (false, None) => ctx.store.open_sync_run(&conn.id, rel, Utc::now()).await?,
        };
        resumed = true;
        ctx.store.start_sync_run(&mut run, Utc::now()).await?;
        loop {
            if run.pages > 0 && run.cursor.is_none() {
                break; // the last page was stored; only the finish was lost
            }
            let page = match tokio::time::timeout(
                ctx.settings.platform_timeout,
                platform.followers_page(&account, &creds, relation, run.cursor.as_deref()),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(PlatformError::Transient {
                    status: None,
                    reason: "timed out".into(),
                }),
            };
            match page {
                Ok(page) => {
                    ctx.store
                        .record_sync_page(
                            &run,
                            &page.accounts,
                            page.next_cursor.as_deref(),
                            Utc::now(),
                        )
                        .await?;
                    run.pages += 1;
                    run.cursor = page.next_cursor;
                    if run.cursor.is_none() {
                        break;
                    }
                }
                Err(
                    PlatformError::Unauthorized { reason } | PlatformError::InvalidGrant { reason },
                ) => {
                    ctx.store
                        .mark_needs_reauth(&conn.id, &reason, Utc::now())
                        .await?;
                    ctx.store.pause_sync_run(&run, &reason, Utc::now()).await?;
                    metrics::counter!(m::JOBS_PARKED_TOTAL, "queue" => QUEUE, "platform" => platform_name.clone()).increment(1);
                    warn!(connection.id = %conn.id, platform = %platform_name, outcome = "parked", "follower sync stopped: connection needs reauth");
                    return Ok(());
                }
                // The app's posting budget is the share job's to track (X counts its limits per
                // endpoint): a sync only waits.
                Err(PlatformError::RateLimited { retry_after, scope }) => {
                    let wait = ctx.settings.retry.rate_limit_wait(retry_after);
                    ctx.store
                        .pause_sync_run(&run, "rate limited", Utc::now())
                        .await?;
                    metrics::counter!(m::RATE_LIMIT_DEFERRALS_TOTAL, "queue" => QUEUE, "platform" => platform_name.clone(), "scope" => scope.as_str()).increment(1);
                    return again(ctx, job, job.retry, wait).await;
                }
                Err(e) => {
                    ctx.store
                        .pause_sync_run(&run, &e.to_string(), Utc::now())
                        .await?;
                    let next = job.retry + 1;
                    return match ctx.settings.retry.delay_after(next) {
                        Some(d) => again(ctx, job, next, d).await,
                        None => {
                            warn!(connection.id = %conn.id, error = %e, "follower sync gave up; the next sweep resumes it");
                            Ok(())
                        }
                    };
                }
            }
        }
        let done = ctx.store.finish_sync_run(&run, Utc::now()).await?;
        info!(connection.id = %conn.id, platform = %platform_name, relation = rel, pages = done.pages, seen = done.seen, gained = done.gained, lost = done.lost, "follower sync finished");
    }
    metrics::counter!(m::JOBS_TOTAL, "queue" => QUEUE, "platform" => platform_name, "outcome" => "succeeded").increment(1);
    Ok(())
}

async fn again(
    ctx: &Ctx,
    job: &FollowerSyncV1,
    retry: u32,
    wait: std::time::Duration,
) -> anyhow::Result<()> {
    let run_at = Utc::now() + chrono::Duration::from_std(wait)?;
    let resume = FollowerSyncV1 {
        connection_id: job.connection_id.clone(),
        resume: true,
        retry,
        run: None,
    };
    let key = format!(
        "follower_sync:{}:resume:{}",
        job.connection_id,
        run_at.timestamp_millis()
    );
    ctx.queue.enqueue(&resume, run_at, &key).await?;
    Ok(())
}
