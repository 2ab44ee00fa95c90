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
    /// by a replay record. `force` (a reason) is required for `outcome_unknown`, which may already
    /// be posted; the reason is stored.
    pub async fn replay_share(
        &self,
        id: &str,
        by_key: &str,
        force: Option<&str>,
        lateness: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<Replay> {
        let Some(share) = self.share(id).await? else {
            return Ok(Replay::NotFound);
        };
        let state = share.state.clone();
        match state.as_str() {
            "failed" | "parked" | "expired" | "cancelled" => {}
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
