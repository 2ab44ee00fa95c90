//! Refresh and follower-sync runs asked for before they run. Whoever asks (the API, a sweep, a
//! retry) records the run as `queued` and pushes a job carrying its id, so the id the caller gets
//! is the run the worker executes, and a second request while one is queued or running finds it
//! instead of queueing another.
//!
//! A refresh run is a `token_refreshes` row (`result`: `queued` → `running` → the outcome); a
//! follower sync is two `follower_sync_runs` rows, one per relation (`queued` → `running` →
//! `finished`, or `skipped` when it could not run), named by the first one's id.

use chrono::{DateTime, Utc};

use super::{Engine, Result, Store, is_sqlite, with_engine, with_pool};
use crate::ids;

/// A run asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRun {
    pub id: String,
    /// `queued` or `running`.
    pub state: String,
    /// False when a run already queued or running was found instead: nothing new was queued.
    pub created: bool,
}

/// What a follower-sync job should do about the run it was queued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncRunState {
    /// Still to run (or to continue).
    Open,
    /// Finished or skipped by an earlier delivery of the job: nothing to do.
    Done,
}

/// The caller's transaction holds the connection's row, so two requests for one connection queue
/// one run: on Postgres a row lock, on SQLite the write lock `begin_write` took.
const LOCK_CONNECTION_PG: &str = "SELECT 1 FROM connections WHERE id = $1 FOR UPDATE";

impl Store {
    /// The connection's refresh run that is queued or running, or a new queued one (due now).
    pub(crate) async fn queue_refresh_run(
        &self,
        connection_id: &str,
        platform: &str,
        now: DateTime<Utc>,
    ) -> Result<QueuedRun> {
        let fresh = ids::new("rfr");
        Ok(with_pool!(
            &self.pool,
            "SELECT id, result FROM token_refreshes WHERE connection_id = $1 \
             AND result IN ('queued', 'running') ORDER BY id LIMIT 1",
            |p, sql| {
                let mut tx = Engine::begin_write(p).await?;
                if !is_sqlite(p) {
                    sqlx::query(with_engine(p, LOCK_CONNECTION_PG))
                        .bind(connection_id)
                        .execute(&mut *tx)
                        .await?;
                }
                let found: Option<(String, String)> = sqlx::query_as(sql)
                    .bind(connection_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let run = match found {
                    Some((id, state)) => QueuedRun {
                        id,
                        state,
                        created: false,
                    },
                    None => {
                        sqlx::query(with_engine(
                            p,
                            "INSERT INTO token_refreshes (id, connection_id, platform, result, message, at) \
                             VALUES ($1, $2, $3, 'queued', NULL, $4)",
                        ))
                        .bind(&fresh)
                        .bind(connection_id)
                        .bind(platform)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        QueuedRun {
                            id: fresh,
                            state: "queued".into(),
                            created: true,
                        }
                    }
                };
                tx.commit().await?;
                run
            }
        ))
    }

    /// Marks a queued refresh run as running. False when it is no longer queued or running (an
    /// earlier delivery of its job settled it): the job has nothing to do.
    pub(crate) async fn claim_refresh_run(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        Ok(with_pool!(
            &self.pool,
            "UPDATE token_refreshes SET result = 'running', at = $2 \
             WHERE id = $1 AND result IN ('queued', 'running')",
            |p, sql| {
                sqlx::query(sql)
                    .bind(id)
                    .bind(now)
                    .execute(p)
                    .await?
                    .rows_affected()
                    == 1
            }
        ))
    }

    /// Settles a refresh run still queued or running with `result` (a run already settled keeps
    /// its outcome).
    pub(crate) async fn settle_refresh_run(
        &self,
        id: &str,
        result: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(
            &self.pool,
            "UPDATE token_refreshes SET result = $2, message = $3, at = $4 \
             WHERE id = $1 AND result IN ('queued', 'running')",
            |p, sql| {
                sqlx::query(sql)
                    .bind(id)
                    .bind(result)
                    .bind(message)
                    .bind(now)
                    .execute(p)
                    .await?;
            }
        );
        Ok(())
    }

    /// The connection's follower sync that is queued or running (its first open run: ids grow
    /// with time, so that is the followers run until it finishes), or a new one: a queued run per
    /// relation, due at `due`, named by the first's id.
    pub(crate) async fn queue_sync_runs(
        &self,
        connection_id: &str,
        relations: &[&str],
        due: DateTime<Utc>,
    ) -> Result<QueuedRun> {
        let fresh: Vec<String> = relations.iter().map(|_| ids::new("fsr")).collect();
        Ok(with_pool!(
            &self.pool,
            "SELECT id, state FROM follower_sync_runs WHERE connection_id = $1 \
             AND state IN ('queued', 'running') ORDER BY id LIMIT 1",
            |p, sql| {
                let mut tx = Engine::begin_write(p).await?;
                if !is_sqlite(p) {
                    sqlx::query(with_engine(p, LOCK_CONNECTION_PG))
                        .bind(connection_id)
                        .execute(&mut *tx)
                        .await?;
                }
                let found: Option<(String, String)> = sqlx::query_as(sql)
                    .bind(connection_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let run = match found {
                    Some((id, state)) => QueuedRun {
                        id,
                        state,
                        created: false,
                    },
                    None => {
                        for (id, relation) in fresh.iter().zip(relations) {
                            sqlx::query(with_engine(
                                p,
                                "INSERT INTO follower_sync_runs (id, connection_id, relation, state, started_at, updated_at) \
                                 VALUES ($1, $2, $3, 'queued', $4, $4)",
                            ))
                            .bind(id)
                            .bind(connection_id)
                            .bind(relation)
                            .bind(due)
                            .execute(&mut *tx)
                            .await?;
                        }
                        QueuedRun {
                            id: fresh.first().cloned().unwrap_or_default(),
                            state: "queued".into(),
                            created: true,
                        }
                    }
                };
                tx.commit().await?;
                run
            }
        ))
    }

    /// Whether the sync a job was queued for is still to run.
    pub(crate) async fn sync_run_state(&self, id: &str) -> Result<SyncRunState> {
        let state: Option<String> = with_pool!(
            &self.pool,
            "SELECT state FROM follower_sync_runs WHERE id = $1",
            |p, sql| sqlx::query_scalar(sql).bind(id).fetch_optional(p).await?
        );
        Ok(match state.as_deref() {
            Some("queued" | "running") => SyncRunState::Open,
            _ => SyncRunState::Done,
        })
    }

    /// Ends the connection's open follower-sync runs that cannot run (the connection was removed,
    /// or its platform lists no followers), saying why.
    pub(crate) async fn skip_open_sync_runs(
        &self,
        connection_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        Ok(with_pool!(
            &self.pool,
            "UPDATE follower_sync_runs SET state = 'skipped', last_error = $2, updated_at = $3, finished_at = $3 \
             WHERE connection_id = $1 AND state IN ('queued', 'running')",
            |p, sql| {
                sqlx::query(sql)
                    .bind(connection_id)
                    .bind(reason)
                    .bind(now)
                    .execute(p)
                    .await?
                    .rows_affected()
            }
        ))
    }

    /// Whether the connection has a follower sync queued, running or paused.
    pub(crate) async fn has_open_sync_runs(&self, connection_id: &str) -> Result<bool> {
        let n: i64 = with_pool!(
            &self.pool,
            "SELECT COUNT(*) FROM follower_sync_runs WHERE connection_id = $1 AND state IN ('queued', 'running')",
            |p, sql| sqlx::query_scalar(sql)
                .bind(connection_id)
                .fetch_one(p)
                .await?
        );
        Ok(n > 0)
    }
}
