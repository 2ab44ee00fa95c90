//! Keeping a connection's credentials good: single-flight token refresh, and the reconnect check
//! that verifies freshly stored tokens, clears `needs_reauth` and resumes parked shares.
//!
//! Single flight across every worker process: a lease on the connection row, taken by
//! compare-and-set, so only one worker spends a rotating refresh token; and the token generation
//! read under the lease is checked again on write, so a worker whose lease lapsed never overwrites
//! newer tokens. The new pair is stored before anything uses it.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use herald_platforms::PlatformError;
use tracing::{info, warn};

use crate::{
    Ctx, metrics as m,
    payloads::{FollowerSyncV1, RefreshV1, ShareV1},
    store::{ConnectionRow, QueuedRun, StoredTokens, TokenWrite},
};

/// How one refresh went.
#[derive(Debug)]
pub enum Refresh {
    /// New tokens are stored; this is the connection as it is now.
    Refreshed(Box<ConnectionRow>),
    /// Another worker holds the refresh lease.
    Busy,
    /// The grant is dead: the connection is flagged `needs_reauth`.
    Dead(String),
    /// Worth trying again later.
    Transient(String),
    /// Nothing to refresh with (no refresh token, or the platform has no refresh).
    Skipped,
}

fn count(platform: &str, result: &'static str) {
    metrics::counter!(m::TOKEN_REFRESHES_TOTAL, "platform" => platform.to_owned(), "result" => result).increment(1);
}

/// Refreshes one connection's tokens, single-flight, recording the outcome as a run of its own
/// (a share's just-in-time refresh).
pub async fn refresh_connection(ctx: &Ctx, connection_id: &str) -> anyhow::Result<Refresh> {
    refresh(ctx, connection_id, None).await
}

/// [`refresh_connection`], recording the outcome as `run`'s when there is one.
async fn refresh(ctx: &Ctx, connection_id: &str, run: Option<&str>) -> anyhow::Result<Refresh> {
    let now = Utc::now();
    let owner = crate::ids::new("lock");
    let lease = ctx.settings.platform_timeout * 2;
    let Some(generation) = ctx
        .store
        .acquire_refresh_lock(connection_id, &owner, now, now + lease)
        .await?
    else {
        return Ok(Refresh::Busy);
    };
    let result = refresh_locked(ctx, connection_id, generation, run).await;
    // On success the token write already released the lease; this covers every other path.
    ctx.store
        .release_refresh_lock(connection_id, &owner)
        .await?;
    result
}

async fn refresh_locked(
    ctx: &Ctx,
    connection_id: &str,
    generation: i64,
    run: Option<&str>,
) -> anyhow::Result<Refresh> {
    // Read the tokens under the lease: a refresh token rotated by the previous holder is the one
    // to spend now.
    let Some(conn) = ctx.store.connection(connection_id).await? else {
        return Ok(Refresh::Skipped);
    };
    let platform_name = conn.platform.clone();
    let Some(platform) = conn.platform_kind().and_then(|k| ctx.platforms.get(k)) else {
        return Ok(Refresh::Skipped);
    };
    let unusable = if conn.revoked_at.is_some() {
        Some("the connection was removed")
    } else if conn.needs_reauth {
        Some("the connection needs reauth: the user must reconnect")
    } else if !conn.can_refresh() {
        Some("no refresh token is stored for this connection")
    } else {
        None
    };
    if let Some(why) = unusable {
        settle_skipped(ctx, run, why).await?;
        count(&platform_name, "skipped");
        return Ok(Refresh::Skipped);
    }
    if !platform.capabilities().refresh {
        // A token that expires on a platform with no refresh: the user will have to reconnect.
        let message = "this platform offers no token refresh";
        ctx.store
            .record_refresh(&conn, run, "skipped", Some(message), Utc::now())
            .await?;
        count(&platform_name, "skipped");
        return Ok(Refresh::Skipped);
    }
    let creds = conn.credentials(&ctx.vault).context("decrypting tokens")?;
    let now = Utc::now();
    let answer = match tokio::time::timeout(
        ctx.settings.platform_timeout,
        platform.refresh(&conn.account(), &creds),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(PlatformError::OutcomeUnknown {
            reason: "the token endpoint did not answer in time".into(),
        }),
    };
    match answer {
        Ok(tokens) => {
            let stored = StoredTokens {
                access_token: Some(tokens.access_token),
                refresh_token: tokens.refresh_token,
                dpop_key: None,
                expires_at: tokens.expires_at,
            };
            match ctx
                .store
                .store_refreshed_tokens(&conn.id, generation, &stored, &ctx.vault, now)
                .await?
            {
                TokenWrite::Stored { .. } => {
                    ctx.store
                        .record_refresh(&conn, run, "succeeded", None, now)
                        .await?;
                    count(&platform_name, "succeeded");
                    info!(connection.id = %conn.id, platform = %platform_name, outcome = "succeeded", "token refreshed");
                    let fresh = ctx
                        .store
                        .connection(&conn.id)
                        .await?
                        .context("connection vanished")?;
                    Ok(Refresh::Refreshed(Box::new(fresh)))
                }
                TokenWrite::Stale => {
                    // Tokens were replaced while we refreshed (a reconnect): theirs are newer.
                    warn!(connection.id = %conn.id, "refreshed tokens dropped: the connection's tokens changed meanwhile");
                    settle_skipped(ctx, run, "the connection's tokens changed meanwhile (a reconnect); the newer ones were kept").await?;
                    count(&platform_name, "stale");
                    Ok(Refresh::Skipped)
                }
            }
        }
        Err(PlatformError::InvalidGrant { reason } | PlatformError::Unauthorized { reason }) => {
            let message = format!(
                "the platform refused to renew the token ({reason}); the user must reconnect"
            );
            ctx.store.mark_needs_reauth(&conn.id, &message, now).await?;
            ctx.store
                .record_refresh(&conn, run, "invalid_grant", Some(&message), now)
                .await?;
            count(&platform_name, "invalid_grant");
            warn!(connection.id = %conn.id, platform = %platform_name, outcome = "invalid_grant", "refresh refused; connection needs reauth");
            Ok(Refresh::Dead(message))
        }
        Err(PlatformError::Unsupported(_)) => {
            settle_skipped(ctx, run, "this platform offers no token refresh").await?;
            count(&platform_name, "skipped");
            Ok(Refresh::Skipped)
        }
        Err(e) => {
            let message = e.to_string();
            ctx.store
                .record_refresh(&conn, run, "transient", Some(&message), now)
                .await?;
            count(&platform_name, "transient");
            warn!(connection.id = %conn.id, platform = %platform_name, outcome = "transient", error.message = %message, "refresh failed; will retry");
            Ok(Refresh::Transient(message))
        }
    }
}

/// A queued run that ends without a refresh says why, unless its outcome is already recorded.
async fn settle_skipped(ctx: &Ctx, run: Option<&str>, why: &str) -> anyhow::Result<()> {
    if let Some(run) = run {
        ctx.store
            .settle_refresh_run(run, "skipped", why, Utc::now())
            .await?;
    }
    Ok(())
}

/// Runs one `refresh` job: its queued run, if it carries one.
pub async fn run(ctx: &Ctx, job: &RefreshV1) -> anyhow::Result<()> {
    let Some(conn) = ctx.store.connection(&job.connection_id).await? else {
        return Ok(());
    };
    let run = job.run.as_deref();
    if let Some(id) = run
        && !ctx.store.claim_refresh_run(id, Utc::now()).await?
    {
        return Ok(()); // an earlier delivery of this job settled its run
    }
    if conn.revoked_at.is_some() {
        return settle_skipped(ctx, run, "the connection was removed").await;
    }
    if conn.needs_reauth {
        if run.is_some() {
            // Flagged since the run was queued; only freshly stored tokens (the reconnect
            // check, a job without a run) can clear that.
            return settle_skipped(
                ctx,
                run,
                "the connection needs reauth: the user must reconnect",
            )
            .await;
        }
        return reconnect_check(ctx, &conn, job).await;
    }
    match refresh(ctx, &conn.id, run).await? {
        Refresh::Transient(_) => retry_later(ctx, job, &conn.platform).await,
        // The holder's refresh serves this job too (if the holder is this run's other
        // delivery, its outcome replaces this one).
        Refresh::Busy => {
            settle_skipped(
                ctx,
                run,
                "another refresh of this connection was under way and served this one",
            )
            .await
        }
        Refresh::Refreshed(_) | Refresh::Dead(_) | Refresh::Skipped => Ok(()),
    }
}

async fn retry_later(ctx: &Ctx, job: &RefreshV1, platform: &str) -> anyhow::Result<()> {
    let next = job.retry + 1;
    let Some(delay) = ctx.settings.retry.delay_after(next) else {
        warn!(connection.id = %job.connection_id, "refresh retries exhausted; the next sweep tries again");
        return Ok(());
    };
    let run_at = Utc::now() + chrono::Duration::from_std(delay)?;
    if job.run.is_none() {
        // A reconnect check (or a job from before runs were queued) tries again as itself.
        let again = RefreshV1 {
            connection_id: job.connection_id.clone(),
            retry: next,
            run: None,
        };
        let key = format!(
            "refresh:{}:retry:{next}:{}",
            job.connection_id,
            run_at.timestamp_millis()
        );
        ctx.queue.enqueue(&again, run_at, &key).await?;
        return Ok(());
    }
    // The retry is a run of its own, queued now, so a request meanwhile finds it.
    let queued = ctx
        .store
        .queue_refresh_run(&job.connection_id, platform, run_at)
        .await?;
    if !queued.created {
        return Ok(()); // a refresh asked for meanwhile serves as the retry
    }
    let again = RefreshV1 {
        connection_id: job.connection_id.clone(),
        retry: next,
        run: Some(queued.id.clone()),
    };
    ctx.queue
        .enqueue(&again, run_at, &run_key(&queued.id))
        .await?;
    Ok(())
}

/// The push key of a queued refresh run: one job per run.
pub fn run_key(run: &str) -> String {
    format!("refresh:run:{run}")
}

/// Queues a refresh of a connection now, or finds the one already queued or running, and pushes
/// the job of a new run.
pub async fn queue_refresh(ctx: &Ctx, conn: &ConnectionRow) -> anyhow::Result<QueuedRun> {
    let queued = ctx
        .store
        .queue_refresh_run(&conn.id, &conn.platform, Utc::now())
        .await?;
    if queued.created {
        let job = RefreshV1 {
            connection_id: conn.id.clone(),
            retry: 0,
            run: Some(queued.id.clone()),
        };
        if let Err(e) = ctx
            .queue
            .enqueue(&job, Utc::now(), &run_key(&queued.id))
            .await
        {
            // Nothing will run it: settle it so the next request queues one again.
            settle_skipped(ctx, Some(&queued.id), "the job could not be queued").await?;
            return Err(e.into());
        }
    }
    Ok(queued)
}

/// Fresh tokens were stored for a flagged connection: verify them with a real call, then clear
/// the flag and resume the parked shares in their original order.
async fn reconnect_check(ctx: &Ctx, conn: &ConnectionRow, job: &RefreshV1) -> anyhow::Result<()> {
    let Some(platform) = conn.platform_kind().and_then(|k| ctx.platforms.get(k)) else {
        return Ok(());
    };
    let creds = conn.credentials(&ctx.vault).context("decrypting tokens")?;
    let now = Utc::now();
    let verified = match tokio::time::timeout(
        ctx.settings.platform_timeout,
        platform.verify(&conn.account(), &creds),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(PlatformError::Transient {
            status: None,
            reason: "verify timed out".into(),
        }),
    };
    match verified {
        Ok(profile) if profile.platform_account_id != conn.platform_account_id => {
            let message = format!(
                "reconnected with a different account ({}), expected {}",
                profile.handle, conn.handle
            );
            ctx.store.mark_needs_reauth(&conn.id, &message, now).await?;
            Ok(())
        }
        Ok(profile) => {
            if !ctx
                .store
                .clear_needs_reauth(&conn.id, conn.token_generation, now)
                .await?
            {
                return Ok(()); // tokens changed again since; that write brings its own check
            }
            if let Some(since) = conn.needs_reauth_since {
                let waited = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
                metrics::histogram!(m::REAUTH_CLEARED_SECONDS, "platform" => conn.platform.clone())
                    .record(waited);
            }
            let (resumed, expired) = ctx.store.resume_parked(&conn.id, now).await?;
            info!(connection.id = %conn.id, platform = %conn.platform, resumed = resumed.len(), expired, "connection verified; parked shares resumed");
            for share in &resumed {
                let job = ShareV1 {
                    share_id: share.id.clone(),
                };
                ctx.queue
                    .enqueue(&job, share.run_at, &share.delivery_key())
                    .await?;
            }
            if profile.display_name.is_some() {
                ctx.store
                    .set_display_name(&conn.id, profile.display_name.as_deref())
                    .await?;
            }
            // A follower sync the flag stopped (or queued while it was set) goes on now.
            if ctx.store.has_open_sync_runs(&conn.id).await? {
                let sync = FollowerSyncV1 {
                    connection_id: conn.id.clone(),
                    resume: true,
                    retry: 0,
                    run: None,
                };
                let key = format!(
                    "follower_sync:{}:reconnect:{}",
                    conn.id, conn.token_generation
                );
                ctx.queue.enqueue(&sync, now, &key).await?;
            }
            Ok(())
        }
        Err(PlatformError::Unauthorized { reason } | PlatformError::InvalidGrant { reason }) => {
            ctx.store
                .mark_needs_reauth(
                    &conn.id,
                    &format!("the new tokens were refused: {reason}"),
                    now,
                )
                .await?;
            Ok(())
        }
        Err(_) => retry_later(ctx, job, &conn.platform).await,
    }
}

/// Enqueues the reconnect check for a connection whose tokens were just stored while flagged.
pub async fn enqueue_reconnect_check(ctx: &Ctx, conn: &ConnectionRow) -> anyhow::Result<()> {
    let job = RefreshV1 {
        connection_id: conn.id.clone(),
        retry: 0,
        run: None,
    };
    let key = format!("reconnect:{}:{}", conn.id, conn.token_generation);
    ctx.queue.enqueue(&job, Utc::now(), &key).await?;
    Ok(())
}

/// Whether a token expiring at `expires_at` should be refreshed before use.
pub(crate) fn expires_soon(ctx: &Ctx, expires_at: Option<chrono::DateTime<Utc>>) -> bool {
    let skew = chrono::Duration::from_std(ctx.settings.refresh_skew).unwrap_or_default();
    expires_at.is_some_and(|t| t - Utc::now() < skew)
}

/// How long a share waits for another worker's refresh of its connection.
pub(crate) const WAIT_FOR_REFRESH: Duration = Duration::from_secs(2);
