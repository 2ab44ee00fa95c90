//! One attempt of a share: claim it, check the connection, post, classify, record.

use std::{
    ops::ControlFlow,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_platforms::{
    Checkpoint, CheckpointSink, Credentials, LimitScope, Platform, PlatformError, PostRequest,
};
use tracing::{info, warn};

use super::refresh::{self, Refresh};

use crate::{
    Ctx,
    error_class::ErrorClass,
    metrics as m,
    payloads::{QueueName, ShareV1},
    share_feed::ClaimedShare,
    store::{
        Admission, AppKey, Claim, ConnectionRow, Deferral, Finished, ShareRow, ShareUpdate, Store,
    },
};

/// Runs a share the store-backed queue claimed for this worker ([`crate::share_feed`]). An `Err`
/// is a store failure: the share keeps its lease, which lapses, and the feed claims it again.
pub async fn run_claimed(ctx: &Ctx, job: ClaimedShare) -> anyhow::Result<()> {
    let ClaimedShare {
        share,
        recovered,
        connection,
    } = job;
    let now = Utc::now();
    if share.not_after.is_some_and(|t| t < now) {
        Box::pin(ctx.store.expire_claimed(&share.id, share.attempts, now))
            .await
            .context("expiring the share")?;
        return Ok(());
    }
    let job_id = share.id.clone();
    attempt(ctx, share, recovered, connection, &job_id).await
}

/// Runs one delivery of a share job from a queue that carries ids (Redis). An `Err` is a store or
/// queue failure: the share row keeps its state and lease, and the reconciler delivers it again.
pub async fn run(ctx: &Ctx, job: &ShareV1, job_id: &str) -> anyhow::Result<()> {
    let now = Utc::now();
    let lease_until = now + ctx.settings.lease;
    // In a block of its own, so that the claim's storage ends before the attempt: a local lives
    // in the future until its scope ends, moved out or not.
    let next = {
        let claim = ctx
            .store
            .claim_share(&job.share_id, now, lease_until)
            .await
            .context("claiming the share")?;
        match claim {
            Claim::Run {
                share,
                recovered,
                connection,
            } => Delivery::Attempt(Box::new(share), recovered, connection),
            Claim::NotDue(share) => Delivery::Early(Box::new(share)),
            Claim::Busy | Claim::Settled | Claim::Gone => return Ok(()),
        }
    };
    match next {
        Delivery::Attempt(share, recovered, connection) => {
            attempt(ctx, share, recovered, connection, job_id).await
        }
        Delivery::Early(share) => {
            // Delivered early (clocks differ between hosts): deliver again when due. The key
            // names this early delivery, so it cannot be mistaken for the pending original.
            let key = format!("{}:early:{}", share.delivery_key(), now.timestamp_millis());
            push(ctx, &share, &key).await
        }
    }
}

/// What a claimed delivery goes on to do, with the rows boxed (see [`run`]).
enum Delivery {
    Attempt(Box<ShareRow>, bool, Option<Box<ConnectionRow>>),
    Early(Box<ShareRow>),
}

async fn push(ctx: &Ctx, share: &ShareRow, key: &str) -> anyhow::Result<()> {
    let job = ShareV1 {
        share_id: share.id.clone(),
    };
    ctx.queue
        .enqueue(&job, share.run_at, key)
        .await
        .context("pushing the share")?;
    Ok(())
}

async fn attempt(
    ctx: &Ctx,
    share: Box<ShareRow>,
    recovered: bool,
    connection: Option<Box<ConnectionRow>>,
    job_id: &str,
) -> anyhow::Result<()> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let update = decide(ctx, &share, recovered, connection).await?;
    let finished = ctx
        .store
        .finish_attempt(&share.id, share.attempts, started_at, &update, Utc::now())
        .await
        .context("recording the attempt")?
        .map(Box::new);
    let Some(finished) = finished else {
        warn!(share.id = %share.id, attempt = share.attempts, "share was taken over by another worker; outcome dropped");
        return Ok(());
    };
    recorded(ctx, &share, &update, finished, clock, job_id).await
}

/// What follows a recorded outcome: metrics, the log line, and the deliveries it calls for.
///
/// A function of its own because a future is laid out by its awaits: locals that live across
/// several of them get slots of their own, which every other state of the future carries too,
/// including the wait on the platform. Here they live only in this future, which shares its slot
/// with the attempt's call.
async fn recorded(
    ctx: &Ctx,
    share: &ShareRow,
    update: &ShareUpdate,
    finished: Box<Finished>,
    clock: Instant,
    job_id: &str,
) -> anyhow::Result<()> {
    let Finished { row, next } = &*finished;
    let platform = share.platform.as_str();
    let outcome = Ended::of(update);
    let queue = QueueName::Share.as_str();
    metrics::counter!(m::JOBS_TOTAL, "queue" => queue, "platform" => platform.to_owned(), "outcome" => outcome.as_str()).increment(1);
    metrics::histogram!(m::JOB_DURATION_SECONDS, "queue" => queue, "platform" => platform.to_owned()).record(clock.elapsed().as_secs_f64());
    if let ShareUpdate::Deferred { reason, .. } = update
        && reason.is_rate_limit()
    {
        metrics::counter!(m::RATE_LIMIT_DEFERRALS_TOTAL, "queue" => queue, "platform" => platform.to_owned(), "scope" => reason.as_str()).increment(1);
    }
    match outcome {
        Ended::Retried => metrics::counter!(m::JOB_RETRIES_TOTAL, "queue" => queue, "platform" => platform.to_owned()).increment(1),
        Ended::Parked => metrics::counter!(m::JOBS_PARKED_TOTAL, "queue" => queue, "platform" => platform.to_owned()).increment(1),
        Ended::Failed | Ended::OutcomeUnknown => metrics::counter!(m::JOBS_DEAD_TOTAL, "queue" => queue, "platform" => platform.to_owned()).increment(1),
        _ => {}
    }
    let (class, message) = match update {
        ShareUpdate::Retry { class, message, .. }
        | ShareUpdate::Failed { class, message, .. }
        | ShareUpdate::Parked { class, message } => (Some(class.as_str()), Some(message.as_str())),
        ShareUpdate::OutcomeUnknown { message } => (
            Some(ErrorClass::OutcomeUnknown.as_str()),
            Some(message.as_str()),
        ),
        ShareUpdate::Succeeded { .. } | ShareUpdate::Deferred { .. } => (None, None),
    };
    info!(
        job.id = job_id,
        share.id = %share.id,
        connection.id = %share.connection_id,
        platform,
        outcome = outcome.as_str(),
        attempt = share.attempts,
        error.class = class,
        error.message = message,
        post.id = row.post_id.as_deref(),
        "share attempt finished"
    );
    if matches!(
        update,
        ShareUpdate::Retry { .. } | ShareUpdate::Deferred { .. }
    ) {
        push(ctx, row, &row.delivery_key()).await?;
    }
    if let Some(next) = next {
        // The share resumed after this one was waiting for it. Its own delivery may already
        // have come and gone (refused while this one ran), so this is a delivery of its own.
        let key = format!("{}:after:{}", next.delivery_key(), row.id);
        push(ctx, next, &key).await?;
    }
    Ok(())
}

/// Everything that happens between holding the lease and knowing the outcome, in four phases;
/// each either hands the next what it needs or settles the attempt (`ControlFlow::Break`).
///
/// A future is as large as its largest await, and a Postgres query's future holds the pool's
/// whole connect inline (about 15 KB): awaited in place, any store call here would make every
/// share in flight carry that through its platform call (hundreds at once). So the store calls
/// on the way are boxed, where they happen, and the wait on the platform holds only the call.
async fn decide(
    ctx: &Ctx,
    share: &ShareRow,
    recovered: bool,
    connection: Option<Box<ConnectionRow>>,
) -> anyhow::Result<ShareUpdate> {
    // Boxed: its reads and refreshes are over before the call, and awaited in place their
    // state would size the wait on the platform too.
    let ready = match Box::pin(preflight(ctx, share, connection)).await? {
        ControlFlow::Continue(ready) => ready,
        ControlFlow::Break(update) => return Ok(update),
    };
    let app = match admit(ctx, share, &ready).await? {
        ControlFlow::Continue(app) => app,
        ControlFlow::Break(update) => return Ok(update),
    };
    let failure = match call(ctx, share, recovered, &ready, app).await? {
        ControlFlow::Continue(failure) => failure,
        ControlFlow::Break(update) => return Ok(update),
    };
    Box::pin(on_failure(ctx, share, &ready, app, failure)).await
}

/// What the call needs once the preflight passed.
struct Ready {
    conn: ConnectionRow,
    platform: Arc<dyn Platform>,
    creds: Credentials,
}

/// How a call failed, and what the classification needs to know about it.
struct Failure {
    error: PlatformError,
    /// When the call was made.
    at: DateTime<Utc>,
    /// The call saved a checkpoint before it failed.
    checkpointed: bool,
}

/// The connection, the account's own limit, the client and the credentials (refreshed just in
/// time): everything that can settle a share without calling the platform.
async fn preflight(
    ctx: &Ctx,
    share: &ShareRow,
    connection: Option<Box<ConnectionRow>>,
) -> anyhow::Result<ControlFlow<ShareUpdate, Ready>> {
    use ControlFlow::{Break, Continue};
    // The feed read the connection with the batch, moments ago; otherwise read it now.
    let conn = match connection {
        Some(c) => Some(*c),
        None => ctx.store.connection(&share.connection_id).await?,
    };
    let Some(conn) = conn else {
        return Ok(Break(failed(
            ErrorClass::ConnectionRemoved,
            "the connection no longer exists",
        )));
    };
    if conn.revoked_at.is_some() {
        return Ok(Break(failed(
            ErrorClass::ConnectionRemoved,
            "the connection was removed",
        )));
    }
    if conn.needs_reauth {
        return Ok(Break(parked(&conn)));
    }
    if let Some(reason) = ctx.settings.bluesky.app_passwords.refuses(&conn) {
        Box::pin(ctx.store.mark_needs_reauth(&conn.id, reason, Utc::now())).await?;
        return Ok(Break(ShareUpdate::Parked {
            class: ErrorClass::NeedsReauth,
            message: reason.into(),
        }));
    }
    // The platform said this account must wait: every share of it waits, without a call.
    if let Some(until) = conn.rate_limited_until.filter(|t| *t > Utc::now()) {
        return Ok(Break(ShareUpdate::Deferred {
            run_at: until,
            reason: Deferral::Account,
        }));
    }
    let Some(platform) = conn
        .platform_kind()
        .and_then(|k| ctx.platforms.get(k))
        .cloned()
    else {
        return Ok(Break(failed(
            ErrorClass::PlatformUnavailable,
            &format!("no client configured for {}", conn.platform),
        )));
    };
    let mut conn = conn;
    let mut creds = match conn.credentials(&ctx.vault) {
        Ok(c) => c,
        // A key missing from the ring is an operator's fix, not the user's: fail loudly.
        Err(e) => {
            return Ok(Break(failed(
                ErrorClass::Vault,
                &format!("tokens cannot be decrypted: {e}"),
            )));
        }
    };
    // Just in time: a token about to expire is refreshed (single-flight) before the call.
    if platform.capabilities().refresh
        && conn.can_refresh()
        && refresh::expires_soon(ctx, creds.expires_at)
    {
        let now = Utc::now();
        match Box::pin(refresh::refresh_connection(ctx, &conn.id)).await? {
            Refresh::Refreshed(fresh) => {
                creds = fresh.credentials(&ctx.vault)?;
                conn = *fresh;
            }
            Refresh::Dead(reason) => {
                return Ok(Break(ShareUpdate::Parked {
                    class: ErrorClass::NeedsReauth,
                    message: reason,
                }));
            }
            Refresh::Busy => {
                // Nothing was tried: the share waits for the other worker without spending an
                // attempt.
                let wait = chrono::Duration::from_std(refresh::WAIT_FOR_REFRESH)?;
                return Ok(Break(ShareUpdate::Deferred {
                    run_at: now + wait,
                    reason: Deferral::Refresh,
                }));
            }
            Refresh::Transient(reason) if creds.expires_at.is_some_and(|t| t <= now) => {
                return Ok(Break(retry_after_failed_refresh(ctx, share, now, &reason)));
            }
            Refresh::Transient(_) | Refresh::Skipped => {}
        }
    }
    Ok(Continue(Ready {
        conn,
        platform,
        creds,
    }))
}

/// The platform app's budget is shared by every tenant: ask before calling. `Continue` carries
/// the app (if the platform has one) for the call's budget report and a rate limit's scope.
async fn admit<'a>(
    ctx: &'a Ctx,
    share: &ShareRow,
    ready: &Ready,
) -> anyhow::Result<ControlFlow<ShareUpdate, Option<AppKey<'a>>>> {
    let kind = ready.platform.kind();
    let Some(app) = ctx.settings.apps.get(kind).map(|a| AppKey {
        platform: kind.as_str(),
        app_id: a.client_id.as_str(),
    }) else {
        return Ok(ControlFlow::Continue(None));
    };
    let recheck = chrono::Duration::from_std(ctx.settings.fair_share_recheck)?;
    Ok(
        match Box::pin(ctx.store.admit_app_call(
            app,
            &share.id,
            &share.tenant_id,
            Utc::now(),
            recheck,
        ))
        .await?
        {
            Admission::Go => ControlFlow::Continue(Some(app)),
            Admission::Closed { until } => ControlFlow::Break(ShareUpdate::Deferred {
                run_at: until,
                reason: Deferral::App,
            }),
            Admission::OverShare { until } => ControlFlow::Break(ShareUpdate::Deferred {
                run_at: until,
                reason: Deferral::FairShare,
            }),
        },
    )
}

/// The platform call (or, for a recovered share the platform cannot deduplicate, a read-back).
async fn call(
    ctx: &Ctx,
    share: &ShareRow,
    recovered: bool,
    ready: &Ready,
    app: Option<AppKey<'_>>,
) -> anyhow::Result<ControlFlow<ShareUpdate, Failure>> {
    use ControlFlow::{Break, Continue};
    let Ready {
        platform, creds, ..
    } = ready;
    let account = ready.conn.account();
    let checkpoints = Arc::new(ShareCheckpoints {
        store: ctx.store.clone(),
        share_id: share.id.clone(),
        attempt: share.attempts,
        saved: AtomicBool::new(false),
    });
    // Read only for shares that carry images: a text share costs no extra query.
    let media = if share.media_count > 0 {
        let rows = ctx.store.share_media(&share.id).await?;
        match crate::media::images(ctx, rows, Utc::now()) {
            Ok(images) => images,
            Err(reason) => return Ok(Break(failed(ErrorClass::Rejected, &reason))),
        }
    } else {
        Vec::new()
    };
    let post = PostRequest {
        share_id: share.id.clone(),
        url: share.url.clone(),
        title: share.title.clone(),
        text: share.body.clone(),
        image_url: share.image_url.clone(),
        media,
        // Stable across every attempt of this share, so the platform's duplicate protection holds.
        idempotency_key: share.id.clone(),
        checkpoint: Checkpoint::new(share.checkpoint.clone(), checkpoints.clone()),
    };
    let now = Utc::now();
    let settles = platform.capabilities().checkpoint_settles_outcome;
    if recovered
        && !(settles && share.checkpoint.is_some())
        && !within_idempotency_window(platform.as_ref(), share.first_sent_at, now)
    {
        // The previous worker vanished mid-call and the platform cannot deduplicate a repeat:
        // settle by reading back, never by posting blindly. (A saved checkpoint is the
        // platform's own way to settle it: the next call resumes from there.)
        match platform.find_published(&account, creds, &post).await {
            Ok(Some(p)) => {
                return Ok(Break(ShareUpdate::Succeeded {
                    post_id: p.post_id,
                    post_url: p.post_url,
                }));
            }
            Ok(None) => {}
            Err(_) => {
                return Ok(Break(ShareUpdate::OutcomeUnknown {
                    message: "a previous attempt stopped after its request may have been sent; check the account before replaying".into(),
                }));
            }
        }
    }
    let result = match tokio::time::timeout(
        ctx.settings.platform_timeout,
        platform.share(&account, creds, &post),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(PlatformError::OutcomeUnknown {
            reason: "timed out".into(),
        }),
    };
    match result {
        Ok(p) => {
            if let (Some(app), Some(budget)) = (app, &p.app_budget) {
                // Advisory: the post exists whatever happens to this write.
                if let Err(e) = Box::pin(ctx.store.report_app_budget(app, budget, Utc::now())).await
                {
                    warn!(share.id = %share.id, platform = app.platform, error.message = %e, "could not record the app's budget");
                }
            }
            Ok(Break(ShareUpdate::Succeeded {
                post_id: p.post_id,
                post_url: p.post_url,
            }))
        }
        Err(error) => Ok(Continue(Failure {
            error,
            at: now,
            checkpointed: checkpoints.saved.load(Ordering::SeqCst),
        })),
    }
}

/// What a platform's error means for the share (and, for some, the connection or the app).
async fn on_failure(
    ctx: &Ctx,
    share: &ShareRow,
    ready: &Ready,
    app: Option<AppKey<'_>>,
    failure: Failure,
) -> anyhow::Result<ShareUpdate> {
    let Ready { conn, platform, .. } = ready;
    let Failure {
        error,
        at: now,
        checkpointed,
    } = failure;
    Ok(match error {
        PlatformError::Unauthorized { reason } | PlatformError::InvalidGrant { reason } => {
            ctx.store
                .mark_needs_reauth(&conn.id, &reason, Utc::now())
                .await?;
            warn!(connection.id = %conn.id, platform = %conn.platform, "connection needs reauth");
            ShareUpdate::Parked {
                class: ErrorClass::NeedsReauth,
                message: reason,
            }
        }
        PlatformError::TokenExpired => match refresh::refresh_connection(ctx, &conn.id).await? {
            // The platform said the token expired before our clock did: refresh, then go again.
            Refresh::Refreshed(_) | Refresh::Busy => {
                let soon = chrono::Duration::from_std(refresh::WAIT_FOR_REFRESH)?;
                retry_or_fail(
                    ctx,
                    share,
                    now + soon,
                    ErrorClass::TokenExpired,
                    "the access token expired; refreshed".into(),
                    Some(401),
                )
            }
            Refresh::Dead(reason) => ShareUpdate::Parked {
                class: ErrorClass::NeedsReauth,
                message: reason,
            },
            Refresh::Transient(reason) => retry_after_failed_refresh(ctx, share, now, &reason),
            Refresh::Skipped => {
                let reason =
                    "the access token expired and this connection cannot refresh it".to_owned();
                ctx.store
                    .mark_needs_reauth(&conn.id, &reason, Utc::now())
                    .await?;
                ShareUpdate::Parked {
                    class: ErrorClass::NeedsReauth,
                    message: reason,
                }
            }
        },
        PlatformError::RateLimited { retry_after, scope } => {
            let wait = ctx.settings.retry.rate_limit_wait(retry_after);
            match (scope, app) {
                // Every tenant's shares of this platform wait, without calling.
                (LimitScope::App, Some(app)) => {
                    ctx.store
                        .close_app_window(app, now + wait, Utc::now())
                        .await?;
                }
                _ => ctx.store.set_rate_limited(&conn.id, now + wait).await?,
            }
            metrics::counter!(m::RATE_LIMIT_DEFERRALS_TOTAL, "queue" => QueueName::Share.as_str(), "platform" => conn.platform.clone(), "scope" => scope.as_str()).increment(1);
            retry_or_fail(
                ctx,
                share,
                now + wait,
                ErrorClass::RateLimited,
                "the platform asked to wait".into(),
                Some(429),
            )
        }
        PlatformError::Rejected { status, reason } => ShareUpdate::Failed {
            class: ErrorClass::Rejected,
            message: reason,
            status: (status > 0).then_some(status),
        },
        PlatformError::Transient { status, reason } => {
            match ctx.settings.retry.delay_after(share.attempts_in_budget()) {
                Some(d) => {
                    retry_or_fail(ctx, share, now + d, ErrorClass::Transient, reason, status)
                }
                None => exhausted(share, ErrorClass::Transient, &reason, status),
            }
        }
        PlatformError::OutcomeUnknown { reason } => {
            // A repeat is safe only where the platform deduplicates it within a window (Mastodon
            // keeps an Idempotency-Key for an hour: a repeat returns the post the lost answer
            // made), or where a checkpoint (Instagram's and Threads' container) lets the next
            // attempt find out what the lost answer did before it does anything again.
            let resume =
                if within_idempotency_window(platform.as_ref(), share.first_sent_at, Utc::now()) {
                    Some("retrying under the same idempotency key")
                } else if platform.capabilities().checkpoint_settles_outcome
                    && (share.checkpoint.is_some() || checkpointed)
                {
                    Some("the next attempt resumes from the saved checkpoint")
                } else {
                    None
                };
            match (
                resume,
                ctx.settings.retry.delay_after(share.attempts_in_budget()),
            ) {
                (Some(how), Some(d)) => retry_or_fail(
                    ctx,
                    share,
                    now + d,
                    ErrorClass::Transient,
                    format!("{reason}; {how}"),
                    None,
                ),
                (Some(_), None) => ShareUpdate::OutcomeUnknown {
                    message: format!("{reason}; retries exhausted"),
                },
                (None, _) => ShareUpdate::OutcomeUnknown {
                    message: format!("{reason} after the request was sent; the post may exist"),
                },
            }
        }
        PlatformError::Unsupported(what) => {
            failed(ErrorClass::Unsupported, &format!("{what} is not supported"))
        }
    })
}

/// A refresh that failed for now: the share retries on its schedule, or fails once it is spent.
fn retry_after_failed_refresh(
    ctx: &Ctx,
    share: &ShareRow,
    now: DateTime<Utc>,
    reason: &str,
) -> ShareUpdate {
    match ctx.settings.retry.delay_after(share.attempts_in_budget()) {
        Some(d) => retry_or_fail(
            ctx,
            share,
            now + d,
            ErrorClass::Transient,
            format!("token refresh failed: {reason}"),
            None,
        ),
        None => exhausted(share, ErrorClass::Transient, reason, None),
    }
}

/// Writes a platform's checkpoint to the share row under this attempt's lease, so it is durable
/// before the step it protects, and a worker that lost the share cannot go on.
struct ShareCheckpoints {
    store: Store,
    share_id: String,
    attempt: i32,
    saved: AtomicBool,
}

#[async_trait]
impl CheckpointSink for ShareCheckpoints {
    async fn save(&self, value: &str) -> Result<(), String> {
        match self
            .store
            .save_checkpoint(&self.share_id, self.attempt, value, Utc::now())
            .await
        {
            Ok(true) => {
                self.saved.store(true, Ordering::SeqCst);
                Ok(())
            }
            Ok(false) => Err("another worker took the share over".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn retry_or_fail(
    ctx: &Ctx,
    share: &ShareRow,
    run_at: DateTime<Utc>,
    class: ErrorClass,
    message: String,
    status: Option<u16>,
) -> ShareUpdate {
    if share.attempts_in_budget() >= ctx.settings.retry.max_attempts {
        return exhausted(share, class, &message, status);
    }
    if share.not_after.is_some_and(|limit| run_at > limit) {
        return ShareUpdate::Failed {
            class,
            message: format!("{message}; the next try would be past the share's lateness limit"),
            status,
        };
    }
    ShareUpdate::Retry {
        run_at,
        class,
        message,
        status,
    }
}

fn exhausted(
    share: &ShareRow,
    class: ErrorClass,
    message: &str,
    status: Option<u16>,
) -> ShareUpdate {
    ShareUpdate::Failed {
        class,
        message: format!(
            "gave up after {} attempts: {message}",
            share.attempts_in_budget()
        ),
        status,
    }
}

fn within_idempotency_window(
    platform: &dyn Platform,
    first_sent_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    let Some(window) = platform.capabilities().idempotency_window else {
        return false;
    };
    let Some(first) = first_sent_at else {
        return true;
    };
    // Keep a margin: a retry must reach the platform well before it forgets the key.
    let usable = window.mul_f64(0.8);
    (now - first).to_std().is_ok_and(|age| age < usable)
}

fn failed(class: ErrorClass, message: &str) -> ShareUpdate {
    ShareUpdate::Failed {
        class,
        message: message.into(),
        status: None,
    }
}

fn parked(conn: &ConnectionRow) -> ShareUpdate {
    ShareUpdate::Parked {
        class: ErrorClass::NeedsReauth,
        message: conn
            .last_error
            .clone()
            .unwrap_or_else(|| "the connection needs to be reconnected".into()),
    }
}

/// How an attempt ended, as `herald_jobs_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Succeeded,
    /// Queued again at the time a rate limit gave.
    RateLimited,
    /// Queued again after a transient failure.
    Retried,
    Failed,
    Parked,
    OutcomeUnknown,
    /// Held back without a call.
    Deferred,
}

impl Ended {
    fn of(update: &ShareUpdate) -> Self {
        match update {
            ShareUpdate::Succeeded { .. } => Self::Succeeded,
            ShareUpdate::Retry {
                class: ErrorClass::RateLimited,
                ..
            } => Self::RateLimited,
            ShareUpdate::Retry { .. } => Self::Retried,
            ShareUpdate::Failed { .. } => Self::Failed,
            ShareUpdate::Parked { .. } => Self::Parked,
            ShareUpdate::OutcomeUnknown { .. } => Self::OutcomeUnknown,
            ShareUpdate::Deferred { .. } => Self::Deferred,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::RateLimited => "rate_limited",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::Parked => "parked",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::Deferred => "deferred",
        }
    }
}
