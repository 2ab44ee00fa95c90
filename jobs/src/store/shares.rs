//! Shares: one row per (request, target connection), the durable record of a post.
//!
//! Every state change is a compare-and-set on `(state, attempts)`, so at most one worker runs a
//! share at a time, a duplicate delivery from the queue finds nothing to do, and a worker whose
//! lease lapsed cannot overwrite the outcome of the worker that took over.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tracing::warn;

use super::{
    ConnectionRow, NewBlob, NewShareMedia, Pool, Result, Store, StoreError,
    connections::connections_in, with_pool,
};
use crate::error_class::ErrorClass;

pub(super) const COLUMNS: &str = "id, tenant_id, connection_id, platform, url, title, body, image_url, state, \
    attempts, run_at, not_after, lease_until, first_sent_at, last_error_class, last_error, \
    last_status, post_id, post_url, created_at, updated_at, finished_at, budget_from, checkpoint, \
    after_share_id, edits, media_count";

/// A queued share may start: it waits for no share parked before it (`shares` is the row under
/// test, `p` its predecessor). Written as a correlated lookup by primary key, evaluated only for
/// a resumed share: as `NOT EXISTS` inside an `OR`, Postgres hashes every queued share instead.
pub(super) const READY: &str = "(CASE WHEN shares.after_share_id IS NULL THEN 1 = 1 ELSE \
    COALESCE((SELECT p.state FROM shares p WHERE p.id = shares.after_share_id), 'gone') \
    NOT IN ('queued', 'running') END)";

/// The states of a share. `succeeded` means a platform post id is stored.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ShareState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Parked,
    OutcomeUnknown,
    Cancelled,
    Expired,
}

impl ShareState {
    pub const ALL: [ShareState; 8] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Parked,
        Self::OutcomeUnknown,
        Self::Cancelled,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Parked => "parked",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ShareRow {
    pub id: String,
    pub tenant_id: String,
    pub connection_id: String,
    pub platform: String,
    pub url: String,
    pub title: Option<String>,
    pub body: Option<String>,
    pub image_url: Option<String>,
    pub state: String,
    pub attempts: i32,
    pub run_at: DateTime<Utc>,
    pub not_after: Option<DateTime<Utc>>,
    pub lease_until: Option<DateTime<Utc>>,
    pub first_sent_at: Option<DateTime<Utc>>,
    pub last_error_class: Option<String>,
    pub last_error: Option<String>,
    pub last_status: Option<i32>,
    pub post_id: Option<String>,
    pub post_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Attempts before this number were spent before the last replay and do not count.
    pub budget_from: i32,
    /// Where a publish in several steps resumes (see [`herald_platforms::Checkpoint`]).
    pub checkpoint: Option<String>,
    /// A share resumed after a reconnect starts only once this one (parked before it) is no
    /// longer queued or running, so an account's parked shares keep their order.
    pub after_share_id: Option<String>,
    /// How many times the tenant edited it: the version `PATCH /v1/shares/{id}` compares.
    #[sqlx(default)]
    pub edits: i32,
    /// How many images it carries (`share_media`).
    #[sqlx(default)]
    pub media_count: i32,
}

impl ShareRow {
    /// Attempts made since the share was created or last replayed.
    pub(crate) fn attempts_in_budget(&self) -> u32 {
        (self.attempts - self.budget_from).max(0) as u32
    }

    pub fn state(&self) -> Result<ShareState> {
        ShareState::parse(&self.state)
            .ok_or_else(|| StoreError::Corrupt(format!("share state `{}`", self.state)))
    }

    /// The queue's idempotency key for the delivery of this share's next attempt: the same for
    /// every push of one scheduled run, different for the next run.
    /// Not started: queued and never claimed, so nothing of it has reached a platform.
    pub fn editable(&self) -> bool {
        self.state == ShareState::Queued.as_str() && self.first_sent_at.is_none()
    }

    pub fn delivery_key(&self) -> String {
        format!(
            "share:{}:{}:{}",
            self.id,
            self.attempts,
            self.run_at.timestamp_millis()
        )
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub id: String,
    pub share_id: String,
    pub number: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub platform_status: Option<i32>,
}

/// One target of a share request, validated.
#[derive(Debug, Clone)]
pub struct NewShare {
    pub connection_id: String,
    pub platform: String,
    pub url: String,
    pub title: Option<String>,
    pub body: Option<String>,
    pub image_url: Option<String>,
    pub run_at: DateTime<Utc>,
    pub not_after: Option<DateTime<Utc>>,
    /// `share_request::duplicate_key` of its URL and text, kept so later requests can be
    /// checked against it.
    pub duplicate_key: Option<String>,
    /// Its images, in order (their bytes are in [`CreateShares::blobs`]).
    pub media: Vec<NewShareMedia>,
}

/// A whole share request: written in one transaction with its idempotency key.
#[derive(Debug, Clone)]
pub struct CreateShares {
    pub tenant_id: String,
    pub idempotency_key: Option<String>,
    /// A digest of the request body: the same key with another body is refused.
    pub request_hash: String,
    pub shares: Vec<NewShare>,
    /// The duplicate guard: refuse a target that has a share of the same duplicate key created
    /// since this time and not failed, cancelled or expired. `None`: the guard is off, or the
    /// request allows duplicates.
    pub duplicates_since: Option<DateTime<Utc>>,
    /// The bytes of every image the shares carry, each content once.
    pub blobs: Vec<NewBlob>,
}

#[derive(Debug)]
pub enum CreateOutcome {
    Created(Vec<ShareRow>),
    /// The key was seen before with the same request: these are the shares it made.
    Replayed(Vec<ShareRow>),
    /// The key was seen before with a different request.
    KeyReused,
    /// This target connection was removed (or is not the tenant's) by the time of the write;
    /// nothing was written.
    ConnectionGone(String),
    /// This target already has this post from within the duplicate window; nothing was written.
    AlreadyShared {
        connection_id: String,
        share_id: String,
    },
}

/// Which of a tenant's shares to list; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct ShareFilter {
    pub url: Option<String>,
    pub state: Option<ShareState>,
    pub connection_id: Option<String>,
    /// Shares to the connections of this user of the tenant's app.
    pub user_id: Option<String>,
    pub platform: Option<String>,
    /// Created at or after.
    pub created_since: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
}

/// A share as a tenant's edit leaves it (every field, the unchanged ones as they were).
#[derive(Debug, Clone)]
pub struct ShareEdit {
    pub url: String,
    pub title: Option<String>,
    pub body: Option<String>,
    pub run_at: DateTime<Utc>,
    pub not_after: Option<DateTime<Utc>>,
    pub duplicate_key: Option<String>,
}

/// What an edit found.
#[derive(Debug)]
pub enum Edit {
    Edited(ShareRow),
    /// Claimed by a worker, or finished: too late to edit.
    Started(ShareRow),
    /// Edited by another request since it was read: read it again.
    Changed,
    NotFound,
}

/// What a worker may do with a share it was handed.
#[derive(Debug)]
pub(crate) enum Claim {
    /// This worker holds the lease. `recovered` says a previous attempt's worker vanished
    /// mid-call, so that attempt may have reached the platform.
    Run {
        share: ShareRow,
        recovered: bool,
        /// The share's connection when the claim read it too (a claim taken with others).
        connection: Option<Box<ConnectionRow>>,
    },
    /// Not due yet (an early delivery): run it at `run_at`.
    NotDue(ShareRow),
    /// Another worker holds a live lease, or won the race for it.
    Busy,
    /// Nothing to do: a final state, parked, cancelled, or expired just now.
    Settled,
    Gone,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub(crate) enum ShareUpdate {
    Succeeded {
        post_id: String,
        post_url: Option<String>,
    },
    Retry {
        run_at: DateTime<Utc>,
        class: ErrorClass,
        message: String,
        status: Option<u16>,
    },
    Failed {
        class: ErrorClass,
        message: String,
        status: Option<u16>,
    },
    Parked {
        class: ErrorClass,
        message: String,
    },
    OutcomeUnknown {
        message: String,
    },
    /// Not tried: a rate limit holds the share until `run_at`. The attempt is given back and no
    /// attempt is recorded.
    Deferred {
        run_at: DateTime<Utc>,
        reason: Deferral,
    },
}

/// Whose rate limit holds a share back without a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deferral {
    /// The account's own limit.
    Account,
    /// The platform app's limit, which every tenant shares.
    App,
    /// The app's budget is scarce and this tenant has used its fair share of it.
    FairShare,
    /// Another worker is refreshing the connection's token; this share goes once it is done.
    Refresh,
}

impl Deferral {
    /// The `scope` label of `herald_rate_limit_deferrals_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::App => "app",
            Self::FairShare => "fair_share",
            Self::Refresh => "refresh",
        }
    }

    /// Whether this is a platform's rate limit (counted in `herald_rate_limit_deferrals_total`).
    pub(crate) fn is_rate_limit(self) -> bool {
        !matches!(self, Self::Refresh)
    }

    /// The error class recorded on the share while it waits.
    pub(super) fn class(self) -> ErrorClass {
        match self {
            Self::Refresh => ErrorClass::WaitingForRefresh,
            _ => ErrorClass::RateLimited,
        }
    }

    pub(super) fn message(self) -> &'static str {
        match self {
            Self::Account => "the account is rate limited; waiting without calling",
            Self::App => {
                "the platform app's rate limit is reached for every account; waiting without calling"
            }
            Self::FairShare => {
                "the platform app's budget is scarce and this tenant has used its fair share; waiting without calling"
            }
            Self::Refresh => "another worker is refreshing this connection's token; waiting for it",
        }
    }
}

impl ShareUpdate {
    pub(super) fn state(&self) -> ShareState {
        match self {
            Self::Succeeded { .. } => ShareState::Succeeded,
            Self::Retry { .. } | Self::Deferred { .. } => ShareState::Queued,
            Self::Failed { .. } => ShareState::Failed,
            Self::Parked { .. } => ShareState::Parked,
            Self::OutcomeUnknown { .. } => ShareState::OutcomeUnknown,
        }
    }

    pub(super) fn outcome(&self) -> &'static str {
        match self {
            Self::Succeeded { .. } => "succeeded",
            Self::Retry { .. } => "retried",
            Self::Deferred { .. } => "deferred",
            Self::Failed { .. } => "failed",
            Self::Parked { .. } => "parked",
            Self::OutcomeUnknown { .. } => "outcome_unknown",
        }
    }
}

/// An attempt recorded: the share's new row, and the share resumed after it that may start now.
#[derive(Debug)]
pub struct Finished {
    pub row: ShareRow,
    pub next: Option<ShareRow>,
}

/// What cancelling found.
#[derive(Debug)]
pub enum Cancel {
    Cancelled(ShareRow),
    TooLate(ShareRow),
    NotFound,
}

/// Share counts for the queue-depth gauges.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShareDepth {
    pub ready: i64,
    pub scheduled: i64,
    pub running: i64,
    pub parked: i64,
    pub oldest_ready: Option<DateTime<Utc>>,
}

impl Store {
    /// Writes a share request with its idempotency key, all or nothing. Requests that arrive
    /// at the same moment share one transaction (`group_commit.rs`), each with its own answer.
    pub async fn create_shares(
        &self,
        req: &CreateShares,
        now: DateTime<Utc>,
    ) -> Result<CreateOutcome> {
        let request = super::share_create::CreateRequest {
            req: req.clone(),
            now,
        };
        self.creates.submit(&self.pool, request).await
    }

    pub async fn share(&self, id: &str) -> Result<Option<ShareRow>> {
        let q = format!("SELECT {COLUMNS} FROM shares WHERE id = $1");
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(p)
            .await?))
    }

    pub async fn tenant_share(&self, tenant_id: &str, id: &str) -> Result<Option<ShareRow>> {
        let q = format!("SELECT {COLUMNS} FROM shares WHERE id = $1 AND tenant_id = $2");
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(p)
            .await?))
    }

    /// A tenant's shares matching the filter, newest first; paged by id (ids are time-ordered).
    pub async fn list_shares(
        &self,
        tenant_id: &str,
        f: &ShareFilter,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ShareRow>> {
        let q = format!(
            "SELECT {COLUMNS} FROM shares WHERE tenant_id = $1 AND ($2 IS NULL OR url = $2) \
             AND ($3 IS NULL OR state = $3) AND ($4 IS NULL OR connection_id = $4) \
             AND ($5 IS NULL OR connection_id IN \
                  (SELECT c.id FROM connections c WHERE c.tenant_id = $1 AND c.user_id = $5)) \
             AND ($6 IS NULL OR platform = $6) AND ($7 IS NULL OR created_at >= $7) \
             AND ($8 IS NULL OR created_at < $8) AND ($9 IS NULL OR id < $9) \
             ORDER BY id DESC LIMIT $10"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| {
            sqlx::query_as(sql)
                .bind(tenant_id)
                .bind(f.url.as_deref())
                .bind(f.state.map(ShareState::as_str))
                .bind(f.connection_id.as_deref())
                .bind(f.user_id.as_deref())
                .bind(f.platform.as_deref())
                .bind(f.created_since)
                .bind(f.created_before)
                .bind(before)
                .bind(limit)
                .fetch_all(p)
                .await?
        }))
    }

    pub async fn share_attempts(&self, share_id: &str) -> Result<Vec<AttemptRow>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT id, share_id, number, started_at, finished_at, outcome, error_class, error_message, platform_status FROM share_attempts WHERE share_id = $1 ORDER BY number",
            |p, sql| sqlx::query_as(sql).bind(share_id).fetch_all(p).await?
        ))
    }

    /// Takes the lease on a share for one attempt, if it is this worker's to run.
    pub(crate) async fn claim_share(
        &self,
        id: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Claim> {
        // The common case, taken together with the claims other jobs make at this moment:
        // queued, due, within its lateness limit and waiting for no earlier share. Anything else
        // is sorted out below.
        let request = ClaimRequest {
            id: id.to_owned(),
            now,
            lease_until,
        };
        if let Some(ClaimedWith { share, connection }) =
            self.claims.submit(&self.pool, request).await?
        {
            return Ok(Claim::Run {
                share,
                recovered: false,
                connection,
            });
        }
        // Boxed: a Postgres query's future holds the pool's whole connect inline (about 15 KB),
        // and the share job would carry that size through its platform call.
        Box::pin(self.claim_share_alone(id, now, lease_until)).await
    }

    /// The careful path of [`Self::claim_share`], for a share the grouped claim did not take.
    async fn claim_share_alone(
        &self,
        id: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Claim> {
        let Some(share) = self.share(id).await? else {
            return Ok(Claim::Gone);
        };
        let state = share.state()?;
        let recovered = match state {
            ShareState::Queued if share.not_after.is_some_and(|t| t < now) => {
                return self.expire(share, now).await;
            }
            ShareState::Queued if share.run_at > now => return Ok(Claim::NotDue(share)),
            ShareState::Queued => false,
            ShareState::Running if share.lease_until.is_some_and(|t| t >= now) => {
                return Ok(Claim::Busy);
            }
            ShareState::Running => true,
            _ => return Ok(Claim::Settled),
        };
        // A resumed share waits for the one parked before it (see `after_share_id`); the worker
        // that finishes that one delivers this one next.
        let q = format!(
            "UPDATE shares SET state = 'running', attempts = attempts + 1, lease_until = $4, \
             first_sent_at = COALESCE(first_sent_at, $3), updated_at = $3 \
             WHERE id = $1 AND state = $2 AND attempts = $5 AND ($2 <> 'queued' OR {READY}) \
             RETURNING {COLUMNS}"
        );
        let claimed: Option<ShareRow> = with_pool!(&self.pool, &q, |p, sql| {
            sqlx::query_as(sql)
                .bind(id)
                .bind(state.as_str())
                .bind(now)
                .bind(lease_until)
                .bind(share.attempts)
                .fetch_optional(p)
                .await?
        });
        Ok(match claimed {
            Some(share) => Claim::Run {
                share,
                recovered,
                connection: None,
            },
            None => Claim::Busy,
        })
    }

    async fn expire(&self, share: ShareRow, now: DateTime<Utc>) -> Result<Claim> {
        let q = format!(
            "UPDATE shares SET state = 'expired', last_error_class = 'expired', \
             last_error = 'not run before its lateness limit', updated_at = $2, finished_at = $2 \
             WHERE id = $1 AND state = 'queued' AND attempts = $3 RETURNING {COLUMNS}"
        );
        let row: Option<ShareRow> = with_pool!(&self.pool, &q, |p, sql| {
            let mut tx = crate::store::Engine::begin_write(p).await?;
            let row: Option<ShareRow> = sqlx::query_as(sql)
                .bind(&share.id)
                .bind(now)
                .bind(share.attempts)
                .fetch_optional(&mut *tx)
                .await?;
            super::webhooks::record_share(p, &mut tx, row.as_ref(), now).await?;
            tx.commit().await?;
            row
        });
        crate::webhooks::wake();
        Ok(row.map_or(Claim::Busy, |_| Claim::Settled))
    }

    /// Records how attempt `attempt` ended, if this worker still holds the share. Returns the new
    /// row, or `None` when another worker took the share over (this outcome is then dropped).
    /// Outcomes that workers record at the same moment share one transaction (`group_commit.rs`).
    pub(crate) async fn finish_attempt(
        &self,
        id: &str,
        attempt: i32,
        started_at: DateTime<Utc>,
        update: &ShareUpdate,
        now: DateTime<Utc>,
    ) -> Result<Option<Finished>> {
        let request = super::share_finish::FinishRequest {
            id: id.to_owned(),
            attempt,
            started_at,
            update: update.clone(),
            now,
        };
        self.outcomes.submit(&self.pool, request).await
    }

    /// Stores the checkpoint of attempt `attempt` if this worker still holds the share. `false`
    /// means another worker took it over: the step the checkpoint protects must not run.
    pub(crate) async fn save_checkpoint(
        &self,
        id: &str,
        attempt: i32,
        checkpoint: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let saved = with_pool!(
            &self.pool,
            "UPDATE shares SET checkpoint = $3, updated_at = $4 WHERE id = $1 AND state = 'running' AND attempts = $2",
            |p, sql| sqlx::query(sql)
                .bind(id)
                .bind(attempt)
                .bind(checkpoint)
                .bind(now)
                .execute(p)
                .await?
                .rows_affected()
        );
        Ok(saved == 1)
    }

    /// Cancels a share that has not run (queued or parked).
    pub async fn cancel_share(
        &self,
        tenant_id: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Cancel> {
        let q = format!(
            "UPDATE shares SET state = 'cancelled', updated_at = $3, finished_at = $3 \
             WHERE id = $1 AND tenant_id = $2 AND state IN ('queued', 'parked') RETURNING {COLUMNS}"
        );
        let row: Option<ShareRow> = with_pool!(&self.pool, &q, |p, sql| {
            let mut tx = crate::store::Engine::begin_write(p).await?;
            let row: Option<ShareRow> = sqlx::query_as(sql)
                .bind(id)
                .bind(tenant_id)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            super::webhooks::record_share(p, &mut tx, row.as_ref(), now).await?;
            tx.commit().await?;
            row
        });
        crate::webhooks::wake();
        Ok(match row {
            Some(r) => Cancel::Cancelled(r),
            None => match self.tenant_share(tenant_id, id).await? {
                Some(r) => Cancel::TooLate(r),
                None => Cancel::NotFound,
            },
        })
    }

    /// Edits a share that has not started (queued, never claimed), as a compare-and-set on its
    /// edit count: a worker claiming it at the same moment, or another edit, wins or loses as a
    /// whole. The caller validated `edit` against the share as read, `edits` times edited.
    pub async fn edit_share(
        &self,
        tenant_id: &str,
        id: &str,
        edits: i32,
        edit: &ShareEdit,
        now: DateTime<Utc>,
    ) -> Result<Edit> {
        let q = format!(
            "UPDATE shares SET url = $4, title = $5, body = $6, run_at = $7, not_after = $8, \
             duplicate_key = $9, edits = edits + 1, updated_at = $10 \
             WHERE id = $1 AND tenant_id = $2 AND edits = $3 AND state = 'queued' \
             AND first_sent_at IS NULL RETURNING {COLUMNS}"
        );
        let row: Option<ShareRow> = with_pool!(&self.pool, &q, |p, sql| {
            sqlx::query_as(sql)
                .bind(id)
                .bind(tenant_id)
                .bind(edits)
                .bind(&edit.url)
                .bind(&edit.title)
                .bind(&edit.body)
                .bind(edit.run_at)
                .bind(edit.not_after)
                .bind(&edit.duplicate_key)
                .bind(now)
                .fetch_optional(p)
                .await?
        });
        if let Some(r) = row {
            return Ok(Edit::Edited(r));
        }
        Ok(match self.tenant_share(tenant_id, id).await? {
            None => Edit::NotFound,
            Some(r) if !r.editable() => Edit::Started(r),
            Some(_) => Edit::Changed,
        })
    }

    /// Shares whose delivery may have been lost: due for longer than the grace period, or running
    /// under a lease that lapsed. The reconciler pushes them again under their delivery key.
    pub(crate) async fn shares_needing_delivery(
        &self,
        now: DateTime<Utc>,
        due_before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ShareRow>> {
        let q = format!(
            "SELECT {COLUMNS} FROM shares WHERE (state = 'queued' AND run_at <= $1) \
             OR (state = 'running' AND lease_until < $2) ORDER BY run_at LIMIT $3"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| {
            sqlx::query_as(sql)
                .bind(due_before)
                .bind(now)
                .bind(limit)
                .fetch_all(p)
                .await?
        }))
    }

    /// Counts for the queue gauges, from the partial index on active shares.
    pub(crate) async fn share_depth(&self, now: DateTime<Utc>) -> Result<ShareDepth> {
        let rows: Vec<(String, i64, i64, Option<DateTime<Utc>>)> = with_pool!(
            &self.pool,
            "SELECT state, SUM(CASE WHEN run_at <= $1 THEN 1 ELSE 0 END), COUNT(*), MIN(CASE WHEN run_at <= $1 THEN run_at END) FROM shares WHERE state IN ('queued', 'running') GROUP BY state",
            |p, sql| sqlx::query_as(sql).bind(now).fetch_all(p).await?
        );
        let mut d = ShareDepth::default();
        for (state, due, all, oldest) in rows {
            match state.as_str() {
                "queued" => {
                    d.ready = due;
                    d.scheduled = all - due;
                    d.oldest_ready = oldest;
                }
                _ => d.running = all,
            }
        }
        d.parked = with_pool!(
            &self.pool,
            "SELECT COUNT(*) FROM shares WHERE state = 'parked'",
            |p, sql| sqlx::query_scalar(sql).fetch_one(p).await?
        );
        Ok(d)
    }
}

/// A delivery's claim, waiting to be taken with others ([`Store::claim_share`]).
#[derive(Debug)]
pub(crate) struct ClaimRequest {
    id: String,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
}

/// A share claimed with others, and its connection, read with theirs.
#[derive(Debug)]
pub(crate) struct ClaimedWith {
    share: ShareRow,
    connection: Option<Box<ConnectionRow>>,
}

/// Claims every share of the batch that is plainly due in one statement and reads their
/// connections in another. A share not claimed here (`None`) goes through the careful path.
pub(crate) fn claim_batch(
    pool: Pool,
    requests: Vec<ClaimRequest>,
) -> BoxFuture<'static, Vec<Result<Option<ClaimedWith>>>> {
    Box::pin(async move {
        // Moments apart: the latest clock reading and lease serve the whole batch.
        let now = requests
            .iter()
            .map(|r| r.now)
            .max()
            .unwrap_or_else(Utc::now);
        let lease_until = requests.iter().map(|r| r.lease_until).max().unwrap_or(now);
        let ids: Vec<&str> = requests.iter().map(|r| r.id.as_str()).collect();
        let claimed = match claim_due(&pool, &ids, now, lease_until).await {
            Ok(rows) => rows,
            // Nothing was claimed: each request takes the careful path, which reports the error.
            Err(e) => {
                warn!(error = %e, claims = requests.len(), "claiming shares together failed; claiming each alone");
                Vec::new()
            }
        };
        let mut connection_ids: Vec<&str> =
            claimed.iter().map(|s| s.connection_id.as_str()).collect();
        connection_ids.sort_unstable();
        connection_ids.dedup();
        // A failed read only costs each share a read of its own in the handler.
        let connections = connections_in(&pool, &connection_ids)
            .await
            .unwrap_or_default();
        let mut claimed: std::collections::HashMap<String, ShareRow> =
            claimed.into_iter().map(|s| (s.id.clone(), s)).collect();
        requests
            .iter()
            .map(|r| {
                // A delivery seen twice in one batch is claimed once; the other finds it running.
                Ok(claimed.remove(&r.id).map(|share| {
                    let connection = connections
                        .iter()
                        .find(|c| c.id == share.connection_id)
                        .map(|c| Box::new(c.clone()));
                    ClaimedWith { share, connection }
                }))
            })
            .collect()
    })
}

async fn claim_due(
    pool: &Pool,
    ids: &[&str],
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Vec<ShareRow>> {
    let set = "UPDATE shares SET state = 'running', attempts = attempts + 1, lease_until = $3, \
               first_sent_at = COALESCE(first_sent_at, $2), updated_at = $2";
    let due = format!(
        "state = 'queued' AND run_at <= $2 AND (not_after IS NULL OR not_after >= $2) AND {READY}"
    );
    Ok(match pool {
        // Rows are locked in id order, so two workers claiming overlapping batches (a delivery
        // seen by both) wait for each other instead of deadlocking.
        // Every share is read by primary key. The ids are an array, not JSON: Postgres
        // estimates `= ANY` of a parameter as a few rows; it planned a JSON list as a hundred
        // and hashed it against a scan of the whole table. The due test is wrapped in a CASE,
        // which hides `state = 'queued'` from the planner: seeing it, it read each share
        // through the partial index `shares_due`, a range over every due share, once per row.
        Pool::Postgres(p) => {
            let q = format!(
                "{set} WHERE id IN (SELECT id FROM shares WHERE id = ANY($1::text[]) \
                 ORDER BY id FOR UPDATE) AND CASE WHEN {due} THEN TRUE ELSE FALSE END \
                 RETURNING {COLUMNS}"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(q))
                .bind(ids)
                .bind(now)
                .bind(lease_until)
                .fetch_all(p)
                .await?
        }
        Pool::Sqlite(p) => {
            let q = format!(
                "{set} WHERE id IN (SELECT value FROM json_each($1)) AND {due} RETURNING {COLUMNS}"
            );
            let json =
                serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query_as(sqlx::AssertSqlSafe(super::sqlite_sql(&q)))
                .bind(json)
                .bind(now)
                .bind(lease_until)
                .fetch_all(p)
                .await?
        }
    })
}
