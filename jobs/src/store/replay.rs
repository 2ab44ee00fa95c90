//! Inspecting share jobs across tenants and replaying them (operators only).

use chrono::{DateTime, Utc};

use super::{Result, ShareRow, Store, with_engine, with_pool};
use crate::ids;

/// Which share jobs to list or replay.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<String>,
    pub platform: Option<String>,
    /// Only jobs updated at or after this time.
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ReplayRow {
    pub id: String,
    pub share_id: String,
    pub from_state: String,
    pub forced: bool,
    pub reason: Option<String>,
    pub by_key: String,
    pub replayed_at: DateTime<Utc>,
}

/// Who asks for a replay, which decides what may be replayed.
#[derive(Debug, Clone, Copy)]
pub enum Replayer<'a> {
    /// An operator: any tenant's failed, parked, expired or cancelled share.
    Operator,
    /// A tenant retrying its own share: failed or expired. A parked share resumes when its
    /// account reconnects, and a cancelled one was the tenant's own choice.
    Tenant(&'a str),
}

impl Replayer<'_> {
    fn may_replay(self, state: &str) -> bool {
        match self {
            Self::Operator => matches!(state, "failed" | "parked" | "expired" | "cancelled"),
            Self::Tenant(_) => matches!(state, "failed" | "expired"),
        }
    }
}

/// What a replay found.
#[derive(Debug)]
pub enum Replay {
    Replayed(ShareRow),
    /// The share may already be posted: replaying needs `force` with a reason.
    NeedsForce(ShareRow),
    /// Queued, running or succeeded: nothing to replay.
    NotReplayable(ShareRow),
    NotFound,
}

impl Store {
    /// Share jobs matching the filter, newest change first, paged by `(updated_at, id)`.
    pub async fn list_share_jobs(
        &self,
        f: &JobFilter,
        before: Option<(DateTime<Utc>, String)>,
        limit: i64,
    ) -> Result<Vec<ShareRow>> {
        let cols = super::shares::COLUMNS;
        let (before_at, before_id) = before.map_or((None, None), |(a, i)| (Some(a), Some(i)));
        let q = format!(
            "SELECT {cols} FROM shares WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR platform = $2) \
             AND ($3 IS NULL OR updated_at >= $3) \
             AND ($4 IS NULL OR updated_at < $4 OR (updated_at = $4 AND id < $5)) \
             ORDER BY updated_at DESC, id DESC LIMIT $6"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| {
            sqlx::query_as(sql)
                .bind(&f.state)
                .bind(&f.platform)
                .bind(f.since)
                .bind(before_at)
                .bind(before_id)
                .bind(limit)
                .fetch_all(p)
                .await?
        }))
    }

    pub async fn share_replays(&self, share_id: &str) -> Result<Vec<ReplayRow>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT id, share_id, from_state, forced, reason, by_key, replayed_at FROM share_replays WHERE share_id = $1 ORDER BY replayed_at",
            |p, sql| { sqlx::query_as(sql).bind(share_id).fetch_all(p).await? }
        ))
    }

    /// Puts a finished share back in the queue with a fresh attempt budget, linked to its history
    /// by a replay record (`by_key`: the API key that asked). `force` (a reason) is required for
    /// `outcome_unknown`, which may already be posted; the reason is stored.
    pub(crate) async fn replay_share(
        &self,
        id: &str,
        by: Replayer<'_>,
        by_key: &str,
        force: Option<&str>,
        lateness: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<Replay> {
        let share = match by {
            Replayer::Operator => self.share(id).await?,
            Replayer::Tenant(tenant_id) => self.tenant_share(tenant_id, id).await?,
        };
        let Some(share) = share else {
            return Ok(Replay::NotFound);
        };
        let state = share.state.clone();
        match state.as_str() {
            s if by.may_replay(s) => {}
            "outcome_unknown" if force.is_some() => {}
            "outcome_unknown" => return Ok(Replay::NeedsForce(share)),
            _ => return Ok(Replay::NotReplayable(share)),
        }
        let cols = super::shares::COLUMNS;
        let q = format!(
            "UPDATE shares SET state = 'queued', run_at = $3, budget_from = attempts, lease_until = NULL, \
             finished_at = NULL, not_after = $4, updated_at = $3 WHERE id = $1 AND state = $2 RETURNING {cols}"
        );
        let row: Option<ShareRow> = with_pool!(&self.pool, &q, |p, sql| {
            let mut tx = crate::store::Engine::begin_write(p).await?;
            let row: Option<ShareRow> = sqlx::query_as(sql)
                .bind(id)
                .bind(&state)
                .bind(now)
                .bind(now + lateness)
                .fetch_optional(&mut *tx)
                .await?;
            if row.is_some() {
                sqlx::query(with_engine(p, "INSERT INTO share_replays (id, share_id, from_state, forced, reason, by_key, replayed_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
                    .bind(ids::new("rpl"))
                    .bind(id)
                    .bind(&state)
                    .bind(force.is_some())
                    .bind(force)
                    .bind(by_key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            row
        });
        Ok(match row {
            Some(r) => Replay::Replayed(r),
            // Its state changed under us (another replay): report what it is now.
            None => self
                .share(id)
                .await?
                .map_or(Replay::NotFound, Replay::NotReplayable),
        })
    }
}

/// One refresh or follower-sync run, as operators see it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct RunRow {
    pub id: String,
    pub connection_id: String,
    pub platform: String,
    /// Refresh: `queued`, `running`, then `succeeded`, `invalid_grant`, `transient` or `skipped`.
    /// Follower sync: `queued`, `running` (in progress or paused), then `finished` or `skipped`.
    pub state: String,
    pub message: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Refresh runs matching the filter, newest first.
    pub async fn list_refresh_runs(
        &self,
        f: &JobFilter,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRow>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT id, connection_id, platform, result AS state, message, at AS started_at, \
            CASE WHEN result IN ('queued', 'running') THEN NULL ELSE at END AS finished_at \
            FROM token_refreshes WHERE ($1 IS NULL OR result = $1) AND ($2 IS NULL OR platform = $2) AND ($3 IS NULL OR at >= $3) \
            AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
            |p, sql| {
                sqlx::query_as(sql)
                    .bind(&f.state)
                    .bind(&f.platform)
                    .bind(f.since)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(p)
                    .await?
            }
        ))
    }

    /// Follower-sync runs matching the filter, newest first.
    pub async fn list_sync_runs(
        &self,
        f: &JobFilter,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRow>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT r.id, r.connection_id, c.platform, r.state, \
            r.relation || ': ' || r.seen || ' seen, ' || r.gained || ' gained, ' || r.lost || ' lost' || COALESCE('; ' || r.last_error, '') AS message, \
            r.started_at, r.finished_at FROM follower_sync_runs r JOIN connections c ON c.id = r.connection_id \
            WHERE ($1 IS NULL OR r.state = $1) AND ($2 IS NULL OR c.platform = $2) AND ($3 IS NULL OR r.updated_at >= $3) \
            AND ($4 IS NULL OR r.id < $4) ORDER BY r.id DESC LIMIT $5",
            |p, sql| {
                sqlx::query_as(sql)
                    .bind(&f.state)
                    .bind(&f.platform)
                    .bind(f.since)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(p)
                    .await?
            }
        ))
    }

    /// One refresh (`rfr_…`) or follower-sync (`fsr_…`) run.
    pub async fn run(&self, id: &str) -> Result<Option<RunRow>> {
        let rows = if id.starts_with("rfr_") {
            with_pool!(
                &self.pool,
                "SELECT id, connection_id, platform, result AS state, message, at AS started_at, \
            CASE WHEN result IN ('queued', 'running') THEN NULL ELSE at END AS finished_at FROM token_refreshes WHERE id = $1",
                |p, sql| {
                    sqlx::query_as::<_, RunRow>(sql)
                        .bind(id)
                        .fetch_all(p)
                        .await?
                }
            )
        } else if id.starts_with("fsr_") {
            with_pool!(
                &self.pool,
                "SELECT r.id, r.connection_id, c.platform, r.state, \
                r.relation || ': ' || r.seen || ' seen, ' || r.gained || ' gained, ' || r.lost || ' lost' || COALESCE('; ' || r.last_error, '') AS message, \
                r.started_at, r.finished_at FROM follower_sync_runs r JOIN connections c ON c.id = r.connection_id WHERE r.id = $1",
                |p, sql| {
                    sqlx::query_as::<_, RunRow>(sql)
                        .bind(id)
                        .fetch_all(p)
                        .await?
                }
            )
        } else {
            Vec::new()
        };
        Ok(rows.into_iter().next())
    }
}
