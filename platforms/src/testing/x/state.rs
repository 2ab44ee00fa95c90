//! What the local X holds: grants, posts, the app's budget and the users' limits, the failures a
//! test queues; and X's error bodies (problem JSON, OAuth errors).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::testing::recorder::Seen;

/// What every handler shares: the state, Herald's client id and secret.
pub(super) type AppState = (Arc<Mutex<Inner>>, String, String);

/// The user who authorizes unless a test says otherwise.
pub const USER: &str = "2244994945";

/// A failure X documents that the next API call (`/2/...`, not the token endpoint) answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 503 with problem JSON.
    Unavailable,
    /// 429 `usage-capped`: the project's monthly cap, with no reset header.
    UsageCapped,
    /// No answer at all (the client's timeout decides).
    Hang,
}

/// One accepted post.
#[derive(Debug, Clone)]
pub struct Post {
    pub id: String,
    /// The bearer token it came with.
    pub token: String,
    pub user: String,
    pub text: String,
    pub created_at: DateTime<Utc>,
    /// Which app window it counted in, from 0 (0 without an app budget).
    pub window: u32,
    /// `media.media_ids`, in order.
    pub media_ids: Vec<String>,
}

/// One upload through `POST /2/media/upload`.
#[derive(Debug, Clone)]
pub struct Media {
    pub id: String,
    pub user: String,
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
    pub media_category: Option<String>,
    /// Set by `POST /2/media/metadata`.
    pub alt_text: Option<String>,
    /// X forgets an upload that no post used within a day; a test expires it at once.
    pub expired: bool,
}

pub(super) struct Code {
    pub(super) user: String,
    pub(super) redirect_uri: String,
    pub(super) challenge: Option<String>,
    pub(super) used: bool,
}

pub(super) struct Grant {
    pub(super) user: String,
    pub(super) access: Vec<String>,
    pub(super) refresh: Option<String>,
    /// Refresh tokens this grant rotated out: seeing one again means it leaked.
    pub(super) spent: Vec<String>,
    pub(super) revoked: bool,
}

/// The app's budget per window, when a test gives it one.
pub(super) struct Budget {
    pub(super) budget: u32,
    pub(super) length: Duration,
    pub(super) window: Option<u32>,
    pub(super) window_ends: DateTime<Utc>,
    pub(super) used: u32,
}

pub(super) struct Inner {
    pub(super) codes: HashMap<String, Code>,
    pub(super) grants: Vec<Grant>,
    /// The account the next authorization is for.
    pub(super) user: String,
    pub(super) issue_refresh: bool,
    pub(super) rotate_refresh: bool,
    pub(super) deny_next: bool,
    pub(super) refresh_delay: Duration,
    pub(super) refreshes: usize,
    pub(super) refresh_requests: usize,
    pub(super) revocations: Vec<String>,
    pub(super) posts: Vec<Post>,
    pub(super) budget: Option<Budget>,
    pub(super) app_refusals: usize,
    /// Accounts (by token) whose own 24-hour limit is spent, until when.
    pub(super) users_limited: HashMap<String, DateTime<Utc>>,
    /// Accounts (by token) whose 15-minute window is spent, until when.
    pub(super) windows_spent: HashMap<String, DateTime<Utc>>,
    /// Followers and follows by user: (id, username), in X's order, and the page size.
    pub(super) graph: HashMap<(String, &'static str), Vec<(String, String)>>,
    pub(super) page_size: usize,
    pub(super) script: VecDeque<Failure>,
    pub(super) counter: u64,
    pub(super) media: Vec<Media>,
}

impl Inner {
    pub(super) fn mint(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{kind}-{}-{}", self.counter, uuid::Uuid::new_v4().simple())
    }

    pub(super) fn live_grant_of_access(&self, token: &str) -> Option<&Grant> {
        self.grants
            .iter()
            .find(|g| !g.revoked && g.access.iter().any(|a| a == token))
    }
}

impl Budget {
    pub(super) fn roll(&mut self, now: DateTime<Utc>) {
        if self.window.is_none() || now >= self.window_ends {
            self.window = Some(self.window.map_or(0, |w| w + 1));
            self.window_ends = whole_second(now) + self.length;
            self.used = 0;
        }
    }

    pub(super) fn headers(&self, h: &mut HeaderMap) {
        let reset = self.window_ends.timestamp().to_string();
        let remaining = self.budget.saturating_sub(self.used).to_string();
        put(h, "x-app-limit-24hour-limit", &self.budget.to_string());
        put(h, "x-app-limit-24hour-remaining", &remaining);
        put(h, "x-app-limit-24hour-reset", &reset);
    }
}

/// The next whole second: X's resets are epoch seconds.
pub(super) fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp() + 1, 0).unwrap_or(t)
}

pub(super) fn put(h: &mut HeaderMap, name: &'static str, value: &str) {
    h.insert(
        HeaderName::from_static(name),
        HeaderValue::from_str(value).expect("a header value"),
    );
}

/// X's problem JSON with `status`, and `Date` (which the client corrects clock skew with).
pub(super) fn problem(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: &str,
    mut h: HeaderMap,
) -> Response {
    put(&mut h, "date", &Utc::now().to_rfc2822());
    put(&mut h, "content-type", "application/problem+json");
    (
        status,
        h,
        Json(json!({ "title": title, "detail": detail, "type": kind, "status": status.as_u16() })),
    )
        .into_response()
}

pub(super) fn too_many(h: HeaderMap) -> Response {
    problem(
        StatusCode::TOO_MANY_REQUESTS,
        "about:blank",
        "Too Many Requests",
        "Too Many Requests",
        h,
    )
}

pub(super) fn unauthorized() -> Response {
    problem(
        StatusCode::UNAUTHORIZED,
        "about:blank",
        "Unauthorized",
        "Unauthorized",
        HeaderMap::new(),
    )
}

pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// `client_id` from HTTP Basic (a confidential client) or the form (a public one).
pub(super) fn client_ok(seen: &Seen, client_id: &str, secret: &str) -> bool {
    if let Some(basic) = seen
        .header("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = STANDARD
            .decode(basic)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        return decoded.as_deref() == Some(&format!("{client_id}:{secret}"));
    }
    seen.form.get("client_id").map(String::as_str) == Some(client_id)
        && seen
            .form
            .get("client_secret")
            .is_none_or(|s| s.as_str() == secret)
}
