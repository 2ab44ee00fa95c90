//! Replaying jobs, shared by the operator API and `herald replay`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    Ctx,
    payloads::ShareV1,
    store::{JobFilter, Replay, Replayer},
};

/// What happened to one job in a replay.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReplayResult {
    pub id: String,
    /// `replayed`, `would_replay` (dry run), `needs_force`, `not_replayable`, `not_found`.
    pub result: String,
    /// The state the job was in.
    pub state: Option<String>,
}

/// Replays one share job. `force` is the operator's reason for replaying a share whose outcome
/// is unknown (it may already be posted).
pub async fn replay_one(
    ctx: &Ctx,
    id: &str,
    by_key: &str,
    force: Option<&str>,
) -> anyhow::Result<ReplayResult> {
    let out = requeue(ctx, id, Replayer::Operator, by_key, force).await?;
    let (result, state) = match out {
        Replay::Replayed(row) => ("replayed", Some(row.state)),
        Replay::NeedsForce(row) => ("needs_force", Some(row.state)),
        Replay::NotReplayable(row) => ("not_replayable", Some(row.state)),
        Replay::NotFound => ("not_found", None),
    };
    Ok(ReplayResult {
        id: id.to_owned(),
        result: result.into(),
        state,
    })
}

/// Puts one share back in the queue for `by` (see [`Replayer`]) and pushes its delivery.
pub async fn requeue(
    ctx: &Ctx,
    id: &str,
    by: Replayer<'_>,
    by_key: &str,
    force: Option<&str>,
) -> anyhow::Result<Replay> {
    let lateness = chrono::Duration::from_std(ctx.settings.share_lateness)?;
    let out = ctx
        .store
        .replay_share(id, by, by_key, force, lateness, Utc::now())
        .await?;
    if let Replay::Replayed(row) = &out {
        let job = ShareV1 {
            share_id: row.id.clone(),
        };
        ctx.queue
            .enqueue(&job, row.run_at, &row.delivery_key())
            .await?;
    }
    Ok(out)
}

/// Replays every share job matching the filter (at most `limit`), or lists them on a dry run.
pub async fn replay_matching(
    ctx: &Ctx,
    filter: &JobFilter,
    by_key: &str,
    force: Option<&str>,
    dry_run: bool,
    limit: i64,
) -> anyhow::Result<Vec<ReplayResult>> {
    let rows = ctx.store.list_share_jobs(filter, None, limit).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if dry_run {
            let result = match row.state.as_str() {
                "failed" | "parked" | "expired" | "cancelled" => "would_replay",
                "outcome_unknown" if force.is_some() => "would_replay",
                "outcome_unknown" => "needs_force",
                _ => "not_replayable",
            };
            out.push(ReplayResult {
                id: row.id,
                result: result.into(),
                state: Some(row.state),
            });
        } else {
            out.push(replay_one(ctx, &row.id, by_key, force).await?);
        }
    }
    Ok(out)
}

/// Why a `since` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    #[error("takes an RFC 3339 time or a span like 90s, 15m, 2h or 7d")]
    Malformed,
    #[error("reaches before the year 1")]
    OutOfRange,
}

/// Parses `90s`, `15m`, `2h`, `7d` into the time that long ago, or (with `rfc3339`) an RFC 3339
/// time. A span reaching before the year 1 is refused rather than overflowing.
pub fn since(spec: &str, now: DateTime<Utc>, rfc3339: bool) -> Result<DateTime<Utc>, SinceError> {
    let spec = spec.trim();
    let t = match spec.find(|c: char| !c.is_ascii_digit()) {
        Some(at) if at > 0 => {
            let (n, unit) = spec.split_at(at);
            let n: i64 = n.parse().map_err(|_| SinceError::OutOfRange)?;
            let d = match unit {
                "s" => chrono::Duration::try_seconds(n),
                "m" => chrono::Duration::try_minutes(n),
                "h" => chrono::Duration::try_hours(n),
                "d" => chrono::Duration::try_days(n),
                _ if rfc3339 => return parse_rfc3339(spec),
                _ => return Err(SinceError::Malformed),
            };
            d.and_then(|d| now.checked_sub_signed(d))
                .ok_or(SinceError::OutOfRange)?
        }
        _ if rfc3339 => return parse_rfc3339(spec),
        _ => return Err(SinceError::Malformed),
    };
    if crate::times::in_range(t) {
        Ok(t)
    } else {
        Err(SinceError::OutOfRange)
    }
}

fn parse_rfc3339(spec: &str) -> Result<DateTime<Utc>, SinceError> {
    let t = DateTime::parse_from_rfc3339(spec)
        .map_err(|_| SinceError::Malformed)?
        .with_timezone(&Utc);
    if crate::times::in_range(t) {
        Ok(t)
    } else {
        Err(SinceError::OutOfRange)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_reads_seconds_minutes_hours_and_days() {
        let now = chrono::Utc::now();
        use super::SinceError::*;
        assert_eq!(
            super::since("2h", now, false),
            Ok(now - chrono::Duration::hours(2))
        );
        assert_eq!(
            super::since("90s", now, false),
            Ok(now - chrono::Duration::seconds(90))
        );
        assert_eq!(
            super::since("7d", now, false),
            Ok(now - chrono::Duration::days(7))
        );
        assert_eq!(super::since("2 hours", now, false), Err(Malformed));
        assert_eq!(super::since("h", now, false), Err(Malformed));
        assert_eq!(
            super::since("2026-01-02T03:04:05Z", now, false),
            Err(Malformed)
        );
        assert!(super::since("2026-01-02T03:04:05Z", now, true).is_ok());
    }

    #[test]
    fn since_refuses_spans_that_overflow_or_reach_before_the_year_1() {
        let now = chrono::Utc::now();
        for spec in [
            "100000000d",
            "2000000000h",
            "9223372036854775807s",
            "99999999999999999999999d",
            "800000d",
        ] {
            assert_eq!(
                super::since(spec, now, true),
                Err(super::SinceError::OutOfRange),
                "{spec}"
            );
        }
        assert!(super::since("700000d", now, false).is_ok());
    }
}
