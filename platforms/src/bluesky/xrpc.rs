//! XRPC plumbing: an answer read whole (bounded) so it can be inspected before it is classified,
//! its classification into [`PlatformError`], the rate-limit wait a 429 asks for, and the record
//! and actor shapes the client reads.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Response, StatusCode, header::HeaderMap};
use serde::Deserialize;
use serde_json::Value;

use super::rich_text::clip;
use crate::error::{LimitScope, PlatformError};

/// An XRPC answer larger than this is not a JSON answer we want to hold in memory.
const MAX_ANSWER_BYTES: usize = 4_000_000;

/// `{pds}/xrpc/{nsid}`.
pub(super) fn url(pds: &str, nsid: &str) -> String {
    format!("{pds}/xrpc/{nsid}")
}

/// An XRPC answer, read whole (bounded) so it can be inspected before it is classified.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

#[derive(Deserialize, Default)]
struct XrpcErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: Option<String>,
}

impl Answer {
    pub(super) fn ok(&self) -> bool {
        self.status.is_success()
    }

    pub(super) fn error_name(&self) -> String {
        serde_json::from_slice::<XrpcErrorBody>(&self.body)
            .map(|b| b.error)
            .unwrap_or_default()
    }

    /// The session is unusable: expired or revoked access token, or a 401 of any kind.
    pub(super) fn session_expired(&self) -> bool {
        match self.status {
            StatusCode::UNAUTHORIZED => true,
            StatusCode::BAD_REQUEST => {
                matches!(self.error_name().as_str(), "ExpiredToken" | "InvalidToken")
            }
            _ => false,
        }
    }

    pub(super) fn json<T: serde::de::DeserializeOwned>(
        &self,
        creates: bool,
    ) -> Result<T, PlatformError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            let reason = format!("unreadable answer: {e}");
            // The record exists now; an unreadable body is not a reason to post again.
            if creates {
                PlatformError::OutcomeUnknown { reason }
            } else {
                PlatformError::Transient {
                    status: None,
                    reason,
                }
            }
        })
    }

    pub(super) fn classify(&self) -> PlatformError {
        let body = serde_json::from_slice::<XrpcErrorBody>(&self.body).unwrap_or_default();
        let name = body.error.as_str();
        // Error pages may be HTML: only a JSON `{error, message}` reaches the reason.
        let reason = match (name, body.message.as_deref()) {
            ("", _) => format!("HTTP {}", self.status.as_u16()),
            (n, Some(m)) => format!("{n}: {}", clip(m, 300)),
            (n, None) => n.to_owned(),
        };
        match (self.status, name) {
            (StatusCode::TOO_MANY_REQUESTS, _) => PlatformError::RateLimited {
                retry_after: rate_limit_wait(&self.headers, Utc::now()),
                // Per account (or per IP): neither has an app shared by every tenant.
                scope: LimitScope::Account,
            },
            (_, "AccountTakedown" | "AccountDeactivated" | "AccountSuspended") => {
                PlatformError::Unauthorized { reason }
            }
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => {
                PlatformError::Unauthorized { reason }
            }
            (StatusCode::BAD_REQUEST, "ExpiredToken" | "InvalidToken") => {
                PlatformError::Unauthorized { reason }
            }
            (StatusCode::NOT_IMPLEMENTED, _) => PlatformError::Rejected {
                status: 501,
                reason,
            },
            (s, _) if s.is_server_error() => PlatformError::Transient {
                status: Some(s.as_u16()),
                reason,
            },
            (s, _) => PlatformError::Rejected {
                status: s.as_u16(),
                reason,
            },
        }
    }
}

/// The wait a 429 asks for: `Retry-After` (seconds) if present, else `RateLimit-Reset` (epoch
/// seconds), corrected for clock skew with `Date`.
pub fn rate_limit_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(secs) = get("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    let reset_at = get("ratelimit-reset")
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|s| DateTime::from_timestamp(s, 0))?;
    let server_now = get("date")
        .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        .map_or(now, |d| d.with_timezone(&Utc));
    Some((reset_at - server_now).to_std().unwrap_or(Duration::ZERO))
}

/// Reads a body up to `limit` bytes. `Ok(None)` when it is larger.
pub(super) async fn read_capped(
    mut res: Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if res.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

pub(super) async fn answer(res: Response, creates: bool) -> Result<Answer, PlatformError> {
    let status = res.status();
    let headers = res.headers().clone();
    let lost = |reason: String| {
        if creates && status.is_success() {
            PlatformError::OutcomeUnknown { reason }
        } else {
            PlatformError::Transient {
                status: Some(status.as_u16()),
                reason,
            }
        }
    };
    match read_capped(res, MAX_ANSWER_BYTES).await {
        Ok(Some(body)) => Ok(Answer {
            status,
            headers,
            body,
        }),
        Ok(None) => Err(lost("answer too large".into())),
        Err(_) => Err(lost("answer cut off".into())),
    }
}

#[derive(Deserialize)]
pub(super) struct RecordBody {
    pub(super) uri: String,
    #[serde(default)]
    pub(super) value: Value,
}

#[derive(Deserialize)]
pub(super) struct ActorRef {
    pub(super) did: String,
    pub(super) handle: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_reset_is_epoch_seconds() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut h = HeaderMap::new();
        h.insert(
            "ratelimit-reset",
            (now.timestamp() + 40).to_string().parse().unwrap(),
        );
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(40)));
        h.insert("retry-after", "5".parse().unwrap());
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(5)));
    }
}
