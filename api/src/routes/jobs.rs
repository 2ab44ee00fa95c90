//! `/v1/jobs`: operators inspect jobs across tenants and replay them. A share is the job of the
//! `share` queue (its id is the share id); attempts carry each error class, message and the
//! platform's status.

use axum::response::IntoResponse;
use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use herald_jobs::{
    payloads::{FollowerSyncV1, Job, RefreshV1},
    replay::{self, ReplayResult},
    store::{JobFilter, ReplayRow, RunRow, ShareState},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiJson, ApiPath, ApiQuery, page_limit,
    shares::{AttemptView, ShareView},
};
use crate::{
    ApiState,
    auth::Operator,
    error::{ApiError, ApiResult},
};

const MAX_BULK: i64 = 1000;

/// The queues whose jobs operators list.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Documentation only: the handler reads the raw value and names it if unknown.
pub enum JobQueueName {
    Share,
    Refresh,
    FollowerSync,
}

/// The queue a bulk replay works on.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Documentation only.
pub enum ShareQueueName {
    Share,
}

/// A share's state, or a refresh or follower-sync run's result.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Documentation only.
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Parked,
    OutcomeUnknown,
    Cancelled,
    Expired,
    InvalidGrant,
    Transient,
    Skipped,
    Finished,
}

const REFRESH_RESULTS: [&str; 6] = [
    "queued",
    "running",
    "succeeded",
    "invalid_grant",
    "transient",
    "skipped",
];
const SYNC_STATES: [&str; 4] = ["queued", "running", "finished", "skipped"];

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplayView {
    pub from_state: String,
    pub forced: bool,
    pub reason: Option<String>,
    pub replayed_at: DateTime<Utc>,
}

impl From<ReplayRow> for ReplayView {
    fn from(r: ReplayRow) -> Self {
        Self {
            from_state: r.from_state,
            forced: r.forced,
            reason: r.reason,
            replayed_at: r.replayed_at,
        }
    }
}

/// One job as operators see it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub queue: String,
    pub tenant_id: String,
    #[serde(flatten)]
    pub share: ShareView,
    /// Earlier replays of this job, oldest first (on `GET /v1/jobs/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replays: Option<Vec<ReplayView>>,
}

/// One job as `GET /v1/jobs/{id}` answers: a share, or a refresh or follower-sync run (`rfr_…`,
/// `fsr_…`).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)] // Documentation only: the handler answers one or the other.
pub enum AnyJob {
    Share(JobView),
    Run(RunView),
}

/// `GET /v1/jobs`: shares (`queue=share`, the default) or runs (`queue=refresh`,
/// `queue=follower_sync`). One list whose items are either, rather than either list: an empty
/// page would be both.
#[derive(ToSchema)]
#[allow(dead_code)] // Documentation only: the handler answers a `JobList` or a `RunList`.
pub struct AnyJobList {
    jobs: Vec<AnyJob>,
    /// Pass as `before` for the next page.
    next_before: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `before` for the next page.
    pub next_before: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// `share` (the default; refresh and follower-sync runs are listed per connection).
    #[param(value_type = Option<JobQueueName>)]
    pub queue: Option<String>,
    /// A share's state on the `share` queue; a run's state on `refresh` (`queued`, `running`,
    /// `succeeded`, `invalid_grant`, `transient`, `skipped`) and `follower_sync` (`queued`,
    /// `running`, `finished`, `skipped`).
    #[param(value_type = Option<JobState>)]
    pub state: Option<String>,
    #[param(value_type = Option<herald_platforms::PlatformKind>)]
    pub platform: Option<String>,
    /// An RFC 3339 time, or a span back from now: `90s`, `15m`, `2h`, `7d`.
    pub since: Option<String>,
    /// The `next_before` of the previous page.
    pub before: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

fn filter(
    queue: Option<&str>,
    state: Option<&str>,
    platform: Option<&str>,
    since: Option<&str>,
) -> ApiResult<JobFilter> {
    if let Some(q) = queue
        && herald_jobs::payloads::QueueName::parse(q).is_none()
    {
        return Err(ApiError::invalid(
            "queue",
            "unknown_queue",
            format!("unknown queue `{q}` (share, refresh, follower_sync)"),
        ));
    }
    let known: fn(&str) -> bool = match queue {
        None | Some("share") => |s: &str| ShareState::parse(s).is_some(),
        Some("refresh") => |s: &str| REFRESH_RESULTS.contains(&s),
        _ => |s: &str| SYNC_STATES.contains(&s),
    };
    if let Some(s) = state
        && !known(s)
    {
        return Err(ApiError::invalid(
            "state",
            "invalid_state",
            format!("unknown state `{s}`"),
        ));
    }
    if let Some(p) = platform
        && herald_platforms::PlatformKind::parse(p).is_none()
    {
        return Err(ApiError::invalid(
            "platform",
            "unknown_platform",
            format!("unknown platform `{p}`"),
        ));
    }
    let since = match since {
        None => None,
        Some(s) => Some(replay::since(s, Utc::now(), true).map_err(|e| match e {
            replay::SinceError::Malformed => ApiError::invalid(
                "since",
                "invalid_time",
                "`since` must be RFC 3339 or a span like 2h",
            ),
            replay::SinceError::OutOfRange => ApiError::invalid(
                "since",
                "time_out_of_range",
                "`since` reaches too far back (before the year 1)",
            ),
        })?),
    };
    Ok(JobFilter {
        state: state.map(str::to_owned),
        platform: platform.map(str::to_owned),
        since,
    })
}

fn view(row: herald_jobs::store::ShareRow) -> ApiResult<JobView> {
    let tenant_id = row.tenant_id.clone();
    let id = row.id.clone();
    Ok(JobView {
        id,
        queue: "share".into(),
        tenant_id,
        share: ShareView::from_row(row)?,
        replays: None,
    })
}

/// Jobs across tenants, newest change first.
#[utoipa::path(get, path = "/v1/jobs", tag = "operators", params(JobQuery),
    responses((status = 200, body = AnyJobList), (status = 403, description = "Not an operator key", body = crate::error::ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    _op: Operator,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> ApiResult<axum::response::Response> {
    let f = filter(
        q.queue.as_deref(),
        q.state.as_deref(),
        q.platform.as_deref(),
        q.since.as_deref(),
    )?;
    let limit = page_limit(q.limit)?;
    // Refresh and follower-sync jobs are their recorded runs, paged by run id.
    if let Some(queue @ ("refresh" | "follower_sync")) = q.queue.as_deref() {
        let runs = if queue == "refresh" {
            state
                .ctx
                .store
                .list_refresh_runs(&f, q.before.as_deref(), limit)
                .await?
        } else {
            state
                .ctx
                .store
                .list_sync_runs(&f, q.before.as_deref(), limit)
                .await?
        };
        let next_before = (runs.len() as i64 == limit)
            .then(|| runs.last().map(|r| r.id.clone()))
            .flatten();
        let jobs = runs
            .into_iter()
            .map(|r| RunView {
                queue: queue.to_owned(),
                run: r,
            })
            .collect();
        return Ok(ApiJson(RunList { jobs, next_before }).into_response());
    }
    let before = match q.before.as_deref() {
        None => None,
        Some(b) => {
            let (at, id) = b.split_once('~').ok_or_else(|| {
                ApiError::invalid(
                    "before",
                    "invalid_cursor",
                    "use the `next_before` of the previous page",
                )
            })?;
            let at = DateTime::parse_from_rfc3339(at).map_err(|_| {
                ApiError::invalid(
                    "before",
                    "invalid_cursor",
                    "use the `next_before` of the previous page",
                )
            })?;
            Some((at.with_timezone(&Utc), id.to_owned()))
        }
    };
    let rows = state.ctx.store.list_share_jobs(&f, before, limit).await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|r| format!("{}~{}", r.updated_at.to_rfc3339(), r.id))
        })
        .flatten();
    let jobs = rows.into_iter().map(view).collect::<ApiResult<Vec<_>>>()?;
    Ok(ApiJson(JobList { jobs, next_before }).into_response())
}

/// One job with its attempts and replays.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "operators", params(("id" = String, Path)),
    responses((status = 200, body = AnyJob), (status = 404, body = crate::error::ErrorBody)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    _op: Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::response::Response> {
    if id.starts_with("rfr_") || id.starts_with("fsr_") {
        let run = state
            .ctx
            .store
            .run(&id)
            .await?
            .ok_or_else(|| ApiError::not_found("job"))?;
        let queue = if id.starts_with("rfr_") {
            "refresh"
        } else {
            "follower_sync"
        };
        return Ok(ApiJson(RunView {
            queue: queue.into(),
            run,
        })
        .into_response());
    }
    let row = state
        .ctx
        .store
        .share(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let attempts = state.ctx.store.share_attempts(&id).await?;
    let replays = state.ctx.store.share_replays(&id).await?;
    let mut job = view(row)?;
    job.share.attempt_history = Some(attempts.into_iter().map(AttemptView::from).collect());
    job.replays = Some(replays.into_iter().map(Into::into).collect());
    Ok(ApiJson(job).into_response())
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Required to replay a share in `outcome_unknown`: it may already be posted.
    #[serde(default)]
    pub force: bool,
    /// Why; required with `force`, stored with the replay.
    pub reason: Option<String>,
}

/// Replay one job: a new attempt, linked to the old ones.
#[utoipa::path(post, path = "/v1/jobs/{id}/replay", tag = "operators", params(("id" = String, Path)), request_body = ReplayRequest,
    responses(
        (status = 202, description = "Queued again", body = ReplayResult),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "`needs_force` (outcome unknown) or `not_replayable` (queued, running, succeeded)", body = crate::error::ErrorBody),
    ), security(("api_key" = [])))]
pub async fn replay_one(
    State(state): State<ApiState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, ApiJson<ReplayResult>)> {
    let req: ReplayRequest = super::optional_json(&body)?;
    if id.starts_with("rfr_") || id.starts_with("fsr_") {
        return replay_run(&state, &id).await;
    }
    let force = super::force_reason(req.force, req.reason.as_deref())?;
    let out = replay::replay_one(&state.ctx, &id, &op.key_id, force.as_deref())
        .await
        .map_err(ApiError::from_anyhow)?;
    match out.result.as_str() {
        "replayed" => Ok((StatusCode::ACCEPTED, ApiJson(out))),
        "not_found" => Err(ApiError::not_found("job")),
        "needs_force" => Err(ApiError::new(
            StatusCode::CONFLICT,
            "needs_force",
            "this share's outcome is unknown and it may already be posted: replay with `force` and a `reason`",
        )),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_replayable",
            format!(
                "the job is {} and cannot be replayed",
                out.state.unwrap_or_default()
            ),
        )),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkReplayRequest {
    #[schema(value_type = Option<ShareQueueName>)]
    pub queue: Option<String>,
    /// The state of the shares to replay (required).
    #[schema(value_type = ShareState, required = true)]
    pub state: Option<String>,
    #[schema(value_type = Option<herald_platforms::PlatformKind>)]
    pub platform: Option<String>,
    /// RFC 3339 or a span back from now (`2h`).
    pub since: Option<String>,
    /// List what would be replayed, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub force: bool,
    pub reason: Option<String>,
    /// At most this many jobs (default and maximum 1000).
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkReplayResult {
    pub dry_run: bool,
    pub jobs: Vec<ReplayResult>,
}

/// Replay every job matching a filter, or list them with `dry_run`.
#[utoipa::path(post, path = "/v1/jobs/replay", tag = "operators", request_body = BulkReplayRequest,
    responses((status = 200, body = BulkReplayResult), (status = 422, body = crate::error::ErrorBody)),
    security(("api_key" = [])))]
pub async fn replay_bulk(
    State(state): State<ApiState>,
    op: Operator,
    ApiJson(req): ApiJson<BulkReplayRequest>,
) -> ApiResult<ApiJson<BulkReplayResult>> {
    let f = filter(
        req.queue.as_deref(),
        req.state.as_deref(),
        req.platform.as_deref(),
        req.since.as_deref(),
    )?;
    if req.queue.as_deref().is_some_and(|q| q != "share") {
        return Err(ApiError::invalid(
            "queue",
            "unsupported_queue",
            "bulk replay is for the share queue; replay a refresh or sync run by its id",
        ));
    }
    if f.state.is_none() {
        return Err(ApiError::invalid(
            "state",
            "state_required",
            "a bulk replay names the `state` to replay (failed, parked, expired, ...)",
        ));
    }
    let limit = match req.limit {
        None => MAX_BULK,
        Some(n) if (1..=MAX_BULK).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid(
                "limit",
                "invalid_limit",
                format!("`limit` must be between 1 and {MAX_BULK}"),
            ));
        }
    };
    let force = super::force_reason(req.force, req.reason.as_deref())?;
    let jobs = replay::replay_matching(
        &state.ctx,
        &f,
        &op.key_id,
        force.as_deref(),
        req.dry_run,
        limit,
    )
    .await
    .map_err(ApiError::from_anyhow)?;
    Ok(ApiJson(BulkReplayResult {
        dry_run: req.dry_run,
        jobs,
    }))
}

/// A refresh or follower-sync run, as operators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub queue: String,
    #[serde(flatten)]
    pub run: RunRow,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    pub jobs: Vec<RunView>,
    pub next_before: Option<String>,
}

/// The push key of a replayed run: one per replay.
fn replay_key<J: Job>(connection_id: &str, now: DateTime<Utc>) -> String {
    format!(
        "{}:{connection_id}:replay:{}",
        J::QUEUE.as_str(),
        now.timestamp_millis()
    )
}

/// Replaying a refresh or follower-sync run enqueues a fresh one for its connection.
async fn replay_run(state: &ApiState, id: &str) -> ApiResult<(StatusCode, ApiJson<ReplayResult>)> {
    let run = state
        .ctx
        .store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let now = Utc::now();
    let queue = &state.ctx.queue;
    let pushed = if id.starts_with("rfr_") {
        let job = RefreshV1 {
            connection_id: run.connection_id.clone(),
            retry: 0,
            run: None,
        };
        queue
            .enqueue(&job, now, &replay_key::<RefreshV1>(&run.connection_id, now))
            .await
    } else {
        let job = FollowerSyncV1 {
            connection_id: run.connection_id.clone(),
            resume: false,
            retry: 0,
            run: None,
        };
        queue
            .enqueue(
                &job,
                now,
                &replay_key::<FollowerSyncV1>(&run.connection_id, now),
            )
            .await
    };
    pushed.map_err(ApiError::internal)?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(ReplayResult {
            id: id.to_owned(),
            result: "replayed".into(),
            state: Some(run.state),
        }),
    ))
}
