//! App-wide rate limits and their fair sharing between tenants.
//!
//! A platform app (X's, Meta's, ...) has one budget of calls per window that every tenant's shares
//! spend. Before a share calls the platform, [`Store::admit_app_call`] decides whether it may:
//! not while the platform said the app must wait; and, when the window's budget is scarce (less
//! left than the work due on the platform), only within the tenant's max-min fair share
//! (`crate::fair_share`). Each decision is one transaction that starts by upserting the app's
//! row, which takes its lock (a row lock on Postgres, the write lock on SQLite): decisions are
//! serialized per app across every worker process, and the store is the only source of truth.

use chrono::{DateTime, Utc};
use herald_platforms::AppBudget;

use super::{Engine, Result, Store, with_engine, with_pool};
use crate::fair_share;

const LOCK: &str = "INSERT INTO app_limits (platform, app_id, updated_at) VALUES ($1, $2, $3) \
    ON CONFLICT (platform, app_id) DO UPDATE SET updated_at = excluded.updated_at \
    RETURNING platform, app_id, window_id, window_ends_at, budget, reported_used, window_used, closed_until";

/// Starts a write transaction on the app's row, creating the row if needed: the upsert takes the
/// row's lock until the transaction ends. Answers the transaction and the row.
macro_rules! lock {
    ($p:expr, $sql:expr, $app:expr, $now:expr) => {{
        let mut tx = Engine::begin_write($p).await?;
        let row: AppLimitRow = sqlx::query_as($sql)
            .bind($app.platform)
            .bind($app.app_id)
            .bind($now)
            .fetch_one(&mut *tx)
            .await?;
        (tx, row)
    }};
}

/// Writes an app's row back, under the lock its transaction took.
macro_rules! save {
    ($row:expr, $p:expr, $tx:expr) => {
        sqlx::query(with_engine(
            $p,
            "UPDATE app_limits SET window_id = $3, window_ends_at = $4, budget = $5, \
             reported_used = $6, window_used = $7, closed_until = $8 WHERE platform = $1 AND app_id = $2",
        ))
        .bind(&$row.platform)
        .bind(&$row.app_id)
        .bind($row.window_id)
        .bind($row.window_ends_at)
        .bind($row.budget)
        .bind($row.reported_used)
        .bind($row.window_used)
        .bind($row.closed_until)
        .execute(&mut *$tx)
        .await?
    };
}

/// One platform app's window, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppLimitRow {
    pub platform: String,
    pub app_id: String,
    /// Counts of tenants' calls belong to one numbered window.
    pub window_id: i64,
    /// When the current window reopens, where known.
    pub window_ends_at: Option<DateTime<Utc>>,
    /// Calls per window: reported by the platform, or learned when it said the app's limit was
    /// reached (the calls Herald made in that window before).
    pub budget: Option<i64>,
    /// Calls the platform counted in the window (limit − remaining), at its latest report.
    pub reported_used: i64,
    /// Calls Herald let through in the window (in flight included).
    pub window_used: i64,
    /// The platform said the app must wait until then.
    pub closed_until: Option<DateTime<Utc>>,
}

impl AppLimitRow {
    /// Starts the next window once the current one has ended: counts start again from zero, the
    /// budget stays what it was.
    fn roll(&mut self, now: DateTime<Utc>) -> bool {
        if self.window_ends_at.is_none_or(|t| t > now) {
            return false;
        }
        self.window_id += 1;
        self.window_ends_at = None;
        self.reported_used = 0;
        self.window_used = 0;
        true
    }

    /// Calls left in the window: the budget less what Herald let through or the platform
    /// counted, whichever is more (Herald's count includes calls whose answer has not come back;
    /// the platform's includes calls made outside Herald).
    fn left(&self) -> Option<i64> {
        self.budget
            .map(|b| b - self.window_used.max(self.reported_used))
    }
}

/// Whether a share may call the platform now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Go,
    /// The app's limit is reached (the platform said so, or the window's budget is spent): every
    /// tenant waits until then.
    Closed {
        until: DateTime<Utc>,
    },
    /// The budget is scarce and this tenant has used its fair share: it waits until then (the
    /// window's end, or an earlier look in case others leave budget unused).
    OverShare {
        until: DateTime<Utc>,
    },
}

/// Which app a decision is about.
#[derive(Debug, Clone, Copy)]
pub struct AppKey<'a> {
    pub platform: &'a str,
    pub app_id: &'a str,
}

impl Store {
    /// Decides whether `tenant_id`'s share may call the platform app now, and if so counts the
    /// call. `recheck` bounds how long a tenant over its share waits before it is looked at again.
    pub(crate) async fn admit_app_call(
        &self,
        app: AppKey<'_>,
        share_id: &str,
        tenant_id: &str,
        now: DateTime<Utc>,
        recheck: chrono::Duration,
    ) -> Result<Admission> {
        with_pool!(&self.pool, LOCK, |p, sql| {
            let (mut tx, mut row) = lock!(p, sql, app, now);
            let rolled = row.roll(now);
            let mine: Option<(i64, i64, Option<DateTime<Utc>>)> = sqlx::query_as(with_engine(
                p,
                "SELECT window_id, calls, deferred_until FROM app_limit_tenants WHERE platform = $1 AND app_id = $2 AND tenant_id = $3",
            ))
            .bind(app.platform)
            .bind(app.app_id)
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
            let deferred = mine.and_then(|(_, _, until)| until).filter(|t| *t > now);
            let admission = if let Some(until) = row.closed_until.filter(|t| *t > now) {
                Admission::Closed { until }
            } else if let Some(until) = deferred {
                Admission::OverShare { until }
            } else {
                match row.left() {
                    // Nothing known of the budget: the platform will say when it is spent.
                    None => Admission::Go,
                    Some(left) if left <= 0 => match row.window_ends_at {
                        Some(until) => Admission::Closed { until },
                        None => Admission::Go,
                    },
                    Some(left) => {
                        // Scarce only if the work due (capped at what is left) does not fit. Work
                        // due includes shares other workers have claimed and are deciding on right
                        // now: counting only queued ones let a tenant whose shares were all being
                        // decided at that moment look idle, and the others took its share (found
                        // by CI). A claimed share already admitted is also in `used`, so a tenant
                        // with calls in flight looks to need a little more than it does: the
                        // error leaves budget unused until the recheck, never takes a share away.
                        let due: i64 = sqlx::query_scalar(with_engine(
                            p,
                            "SELECT COUNT(*) FROM (SELECT 1 FROM shares WHERE platform = $1 AND state IN ('queued', 'running') AND run_at <= $2 AND id <> $4 LIMIT $3) due",
                        ))
                        .bind(app.platform)
                        .bind(now)
                        .bind(left)
                        .bind(share_id)
                        .fetch_one(&mut *tx)
                        .await?;
                        if due < left {
                            Admission::Go
                        } else {
                            let due: Vec<(String, i64)> = sqlx::query_as(with_engine(
                                p,
                                "SELECT tenant_id, COUNT(*) FROM shares WHERE platform = $1 AND state IN ('queued', 'running') AND run_at <= $2 AND id <> $3 GROUP BY tenant_id",
                            ))
                            .bind(app.platform)
                            .bind(now)
                            .bind(share_id)
                            .fetch_all(&mut *tx)
                            .await?;
                            let used: Vec<(String, i64)> = sqlx::query_as(with_engine(
                                p,
                                "SELECT tenant_id, calls FROM app_limit_tenants WHERE platform = $1 AND app_id = $2 AND window_id = $3",
                            ))
                            .bind(app.platform)
                            .bind(app.app_id)
                            .bind(row.window_id)
                            .fetch_all(&mut *tx)
                            .await?;
                            let count = |v: Vec<(String, i64)>| -> Vec<(String, u64)> {
                                v.into_iter().map(|(t, n)| (t, n.max(0) as u64)).collect()
                            };
                            let budget = (row.window_used + left).max(0) as u64;
                            if fair_share::may_call(tenant_id, budget, &count(used), &count(due)) {
                                Admission::Go
                            } else {
                                let soon = now + recheck;
                                Admission::OverShare {
                                    until: row.window_ends_at.map_or(soon, |end| end.min(soon)),
                                }
                            }
                        }
                    }
                }
            };
            match admission {
                Admission::Go => {
                    row.window_used += 1;
                    sqlx::query(with_engine(
                        p,
                        "INSERT INTO app_limit_tenants (platform, app_id, tenant_id, window_id, calls, deferred_until) VALUES ($1, $2, $3, $4, 1, NULL) \
                         ON CONFLICT (platform, app_id, tenant_id) DO UPDATE SET \
                         calls = CASE WHEN app_limit_tenants.window_id = excluded.window_id THEN app_limit_tenants.calls + 1 ELSE 1 END, \
                         window_id = excluded.window_id, deferred_until = NULL",
                    ))
                    .bind(app.platform)
                    .bind(app.app_id)
                    .bind(tenant_id)
                    .bind(row.window_id)
                    .execute(&mut *tx)
                    .await?;
                }
                Admission::OverShare { until } if deferred.is_none() => {
                    sqlx::query(with_engine(
                        p,
                        "INSERT INTO app_limit_tenants (platform, app_id, tenant_id, window_id, calls, deferred_until) VALUES ($1, $2, $3, $4, 0, $5) \
                         ON CONFLICT (platform, app_id, tenant_id) DO UPDATE SET \
                         calls = CASE WHEN app_limit_tenants.window_id = excluded.window_id THEN app_limit_tenants.calls ELSE 0 END, \
                         window_id = excluded.window_id, deferred_until = excluded.deferred_until",
                    ))
                    .bind(app.platform)
                    .bind(app.app_id)
                    .bind(tenant_id)
                    .bind(row.window_id)
                    .bind(until)
                    .execute(&mut *tx)
                    .await?;
                }
                Admission::OverShare { .. } | Admission::Closed { .. } => {}
            }
            if rolled || admission == Admission::Go {
                save!(row, p, tx);
            }
            tx.commit().await?;
            Ok(admission)
        })
    }

    /// Records what an answer said of the app's budget in its window. A report of a window that
    /// has already ended is ignored (an answer that came back late).
    pub(crate) async fn report_app_budget(
        &self,
        app: AppKey<'_>,
        report: &AppBudget,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if report.resets_at <= now {
            return Ok(());
        }
        with_pool!(&self.pool, LOCK, |p, sql| {
            let (mut tx, mut row) = lock!(p, sql, app, now);
            row.roll(now);
            // A reset well past the one known means the platform is in a later window already.
            let later = chrono::Duration::seconds(2);
            if row
                .window_ends_at
                .is_some_and(|end| report.resets_at > end + later)
            {
                row.window_id += 1;
                row.reported_used = 0;
                row.window_used = 0;
            }
            row.window_ends_at = Some(report.resets_at);
            row.budget = Some(i64::from(report.limit));
            row.reported_used = row
                .reported_used
                .max(i64::from(report.limit.saturating_sub(report.remaining)));
            save!(row, p, tx);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The platform said the app's limit is reached: no tenant's share calls it until `until`,
    /// when a new window opens. Where the platform never said the budget, the calls Herald made in
    /// this window before (the one refused excluded) are taken as the budget from now on.
    pub(crate) async fn close_app_window(
        &self,
        app: AppKey<'_>,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(&self.pool, LOCK, |p, sql| {
            let (mut tx, mut row) = lock!(p, sql, app, now);
            row.roll(now);
            let budget = *row.budget.get_or_insert((row.window_used - 1).max(1));
            row.reported_used = row.reported_used.max(budget);
            let until = row.closed_until.map_or(until, |t| t.max(until));
            row.closed_until = Some(until);
            row.window_ends_at = Some(until);
            save!(row, p, tx);
            tx.commit().await?;
            Ok(())
        })
    }

    /// One platform app's window, for operators and tests.
    pub async fn app_limit(&self, app: AppKey<'_>) -> Result<Option<AppLimitRow>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT platform, app_id, window_id, window_ends_at, budget, reported_used, window_used, closed_until FROM app_limits WHERE platform = $1 AND app_id = $2",
            |p, sql| sqlx::query_as(sql)
                .bind(app.platform)
                .bind(app.app_id)
                .fetch_optional(p)
                .await?
        ))
    }
}
