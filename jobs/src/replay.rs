//! Replaying jobs, shared by the operator API and `herald replay`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    Ctx,
    payloads::{QueueName, ShareV1},
    store::{JobFilter, Replay},
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
    let lateness = chrono::Duration::from_std(ctx.settings.share_lateness)?;
    let out = ctx
        .store
        .replay_share(id, by_key, force, lateness, Utc::now())
        .await?;
    let (result, state) = match out {
        Replay::Replayed(row) => {
            let payload = serde_json::to_value(ShareV1 {
                share_id: row.id.clone(),
            })?;
            ctx.queue
                .push(QueueName::Share, payload, row.run_at, &row.delivery_key())
                .await?;
            ("replayed", Some(row.state))
        }
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

/// Parses `90s`, `15m`, `2h`, `7d` into the time that long ago.
pub fn since(spec: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let spec = spec.trim();
    let (n, unit) = spec.split_at(spec.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let d = match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => return None,
    };
    Some(now - d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_reads_seconds_minutes_hours_and_days() {
        let now = chrono::Utc::now();
        assert_eq!(
            super::since("2h", now),
            Some(now - chrono::Duration::hours(2))
        );
        assert_eq!(
            super::since("90s", now),
            Some(now - chrono::Duration::seconds(90))
        );
        assert_eq!(
            super::since("7d", now),
            Some(now - chrono::Duration::days(7))
        );
        assert_eq!(super::since("2 hours", now), None);
        assert_eq!(super::since("h", now), None);
    }
}
