//! The Graph API as Meta's three hosts share it: one error envelope and its classification, the
//! same throttling codes and headers, long-lived tokens through the same GET exchanges, and posts
//! listed on edges shaped alike (read-back).

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Client, RequestBuilder, Response, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, de::DeserializeOwned};

use crate::{
    error::{LimitScope, PlatformError},
    http,
    kind::PlatformKind,
    oauth::{CodeToken, Granted, OAuthApp},
    text::{lead, post_matches},
    types::{Account, Credentials, PostRequest, Published, TokenSet},
};

/// One Graph host at one pinned version (`https://graph.facebook.com/v24.0/…`).
#[derive(Debug, Clone)]
pub struct Graph {
    kind: PlatformKind,
    http: Client,
    base: String,
    version: &'static str,
}

impl Graph {
    pub fn new(
        kind: PlatformKind,
        http: Client,
        base_url: impl Into<String>,
        version: &'static str,
    ) -> Self {
        Self {
            kind,
            http,
            base: base_url.into().trim_end_matches('/').to_owned(),
            version,
        }
    }

    pub fn kind(&self) -> PlatformKind {
        self.kind
    }

    pub fn http(&self) -> &Client {
        &self.http
    }

    /// A versioned path: `{base}/{version}/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}/{path}", self.base, self.version)
    }

    /// `GET {path}?fields=…` of one node, read as `T`.
    pub async fn fields<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        fields: &str,
        access_token: &str,
    ) -> Result<T, PlatformError> {
        let req = self
            .http
            .get(self.url(path))
            .query(&[("fields", fields), ("access_token", access_token)]);
        graph_call(self.kind, operation, false, req).await
    }

    /// `POST {path}` with a form, read as `T`. `creates` marks the call that has an effect.
    pub async fn post_form<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        creates: bool,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<T, PlatformError> {
        let req = self.http.post(self.url(path)).form(form);
        graph_call(self.kind, operation, creates, req).await
    }

    /// Exchanges a long-lived token (at least 24 hours old and unexpired) for a fresh 60-day one
    /// at the unversioned `refresh_access_token` (Instagram `ig_refresh_token`, Threads
    /// `th_refresh_token`). There is no separate refresh token.
    pub async fn refresh_long_lived(
        &self,
        grant_type: &str,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        let token = token(creds).map_err(as_grant_error)?;
        let req = self
            .http
            .get(format!("{}/refresh_access_token", self.base))
            .query(&[("grant_type", grant_type), ("access_token", token)]);
        exchange(self.kind, "refresh", req).await
    }

    /// Trades a short-lived token from the code exchange for a 60-day one at the unversioned
    /// `access_token` (Instagram `ig_exchange_token`, Threads `th_exchange_token`).
    pub async fn exchange_short_lived(
        &self,
        grant_type: &str,
        client_secret: &str,
        short_lived: &SecretString,
    ) -> Result<TokenSet, PlatformError> {
        let req = self
            .http
            .get(format!("{}/access_token", self.base))
            .query(&[
                ("grant_type", grant_type),
                ("client_secret", client_secret),
                ("access_token", short_lived.expose_secret()),
            ]);
        exchange(self.kind, "exchange_token", req).await
    }

    /// The account a code grants on Instagram or Threads: the short-lived token from the code
    /// exchange traded for a 60-day one (`grant_type`: `ig_exchange_token`, `th_exchange_token`)
    /// with the app's secret. The account id is the answer's `user_id`; `me` stands in until
    /// verification reports it.
    pub async fn exchange_code_token(
        &self,
        grant_type: &str,
        app: &OAuthApp,
        token: &CodeToken,
    ) -> Result<Vec<Granted>, PlatformError> {
        let secret = app
            .client
            .client_secret
            .as_ref()
            .ok_or_else(|| PlatformError::Rejected {
                status: 0,
                reason: "the app secret is not configured".into(),
            })?;
        let long = self
            .exchange_short_lived(grant_type, secret.expose_secret(), &token.access())
            .await?;
        Ok(vec![Granted {
            account: Account {
                platform_account_id: token.user_id().unwrap_or("me").to_owned(),
                handle: String::new(),
                extras: serde_json::Map::new(),
            },
            creds: Credentials {
                access_token: Some(long.access_token),
                expires_at: long.expires_at,
                ..Credentials::default()
            },
        }])
    }

    /// Looks for the share among an edge's latest posts (`GET {edge}?fields=…&limit=25`) newer
    /// than `window`, matching its URL and words. With `Since::Asked` the edge is given Graph's
    /// `since`, so an undated post passed that filter and counts; with `Since::Checked` only posts
    /// with a timestamp inside the window count.
    pub async fn read_back<P: ListedPost>(
        &self,
        edge: &str,
        fields: &str,
        window: chrono::Duration,
        since: Since,
        access_token: &str,
        post: &PostRequest,
    ) -> Result<Option<Published>, PlatformError> {
        let (from, from_param) = read_back_since(window);
        let mut query = vec![("fields", fields)];
        if since == Since::Asked {
            query.push(("since", from_param.as_str()));
        }
        query.extend([("limit", "25"), ("access_token", access_token)]);
        let req = self.http.get(self.url(edge)).query(&query);
        let list: Listing<P> = graph_call(self.kind, "find_published", false, req).await?;
        let found = list.data.into_iter().find(|p| {
            let dated = p.timestamp().and_then(parse_graph_time);
            let recent = match since {
                Since::Asked => dated.is_none_or(|t| t >= from),
                Since::Checked => dated.is_some_and(|t| t >= from),
            };
            recent && post_matches(post, lead(post), p.text().unwrap_or(""), &p.links())
        });
        Ok(found.map(ListedPost::published))
    }
}

/// How read-back bounds an edge's posts in time (see [`Graph::read_back`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Asked,
    Checked,
}

/// A post as an edge lists it (page feed, IG media, threads).
pub trait ListedPost: DeserializeOwned {
    fn timestamp(&self) -> Option<&str>;
    fn text(&self) -> Option<&str>;
    /// Links the post carries besides its text (a feed post's `link`, a thread's attachment).
    fn links(&self) -> Vec<&str>;
    fn published(self) -> Published;
}

#[derive(Deserialize)]
struct Listing<P> {
    #[serde(default = "Vec::new")]
    data: Vec<P>,
}

/// The text of a caption or thread: the share's text (or else its title), a blank line, the URL.
pub fn caption(post: &PostRequest) -> String {
    match lead(post) {
        Some(lead) => format!("{lead}\n\n{}", post.url),
        None => post.url.clone(),
    }
}

/// A Graph node id (page, IG user, container): digits and the `_` of `<page>_<post>` ids only, so
/// a stored value can never change the path it is put into.
pub fn checked_id(id: &str) -> Result<&str, PlatformError> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(PlatformError::Rejected {
            status: 0,
            reason: "the connection has no usable Graph id".into(),
        })
    }
}

/// The access token, or `Unauthorized` when none is stored. Graph calls send it as the documented
/// `access_token` parameter; transport errors never carry the URL (see [`http::send`]).
pub fn token(creds: &Credentials) -> Result<&str, PlatformError> {
    creds
        .access_token
        .as_ref()
        .map(|t| t.expose_secret())
        .ok_or_else(|| PlatformError::Unauthorized {
            reason: "no access token stored".into(),
        })
}

/// The Graph error envelope `{"error":{"message","type","code","error_subcode","fbtrace_id"}}`.
#[derive(Deserialize, Default)]
struct GraphErrorBody {
    error: Option<GraphError>,
}

#[derive(Deserialize, Default)]
struct GraphError {
    message: Option<String>,
    code: Option<i64>,
    error_subcode: Option<i64>,
    #[serde(default)]
    is_transient: bool,
    error_user_msg: Option<String>,
}

/// How long Meta asks to wait: the largest `estimated_time_to_regain_access` (minutes) in
/// `X-Business-Use-Case-Usage` (`{"<id>":[{"type","call_count",…,"estimated_time_to_regain_access"}]}`),
/// which page and Instagram tokens are throttled by. `X-App-Usage` carries percentages only, so it
/// gives no wait.
pub fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    #[derive(Deserialize)]
    struct Usage {
        estimated_time_to_regain_access: Option<u64>,
    }
    let raw = headers.get("x-business-use-case-usage")?.to_str().ok()?;
    let usage: std::collections::HashMap<String, Vec<Usage>> = serde_json::from_str(raw).ok()?;
    let minutes = usage
        .values()
        .flatten()
        .filter_map(|u| u.estimated_time_to_regain_access)
        .max()?;
    (minutes > 0).then(|| Duration::from_secs(minutes * 60))
}

/// Whether `X-App-Usage` (`{"call_count","total_cputime","total_time"}`, percentages of the app's
/// hourly budget) says a share of the app's budget is used up.
pub fn app_usage_spent(headers: &HeaderMap) -> bool {
    #[derive(Deserialize)]
    struct AppUsage {
        call_count: Option<u64>,
        total_cputime: Option<u64>,
        total_time: Option<u64>,
    }
    headers
        .get("x-app-usage")
        .and_then(|v| v.to_str().ok())
        .and_then(|raw| serde_json::from_str::<AppUsage>(raw).ok())
        .is_some_and(|u| {
            [u.call_count, u.total_cputime, u.total_time]
                .into_iter()
                .flatten()
                .any(|pct| pct >= 100)
        })
}

/// The outcome class of a Graph error, from its code and subcode first (Graph answers throttling
/// and dead tokens with 400 or 403 as often as with 429 or 401), then the HTTP status.
/// Sources: Graph error-handling guide, Instagram error codes, Mixpost's `ManagesRateLimit`.
pub fn classify_graph_error(
    status: u16,
    code: Option<i64>,
    subcode: Option<i64>,
    is_transient: bool,
    reason: String,
    retry_after: Option<Duration>,
) -> PlatformError {
    let rejected = |reason| PlatformError::Rejected { status, reason };
    let account_limit = |retry_after| PlatformError::RateLimited {
        retry_after,
        scope: LimitScope::Account,
    };
    match subcode {
        // Instagram's publishing quota (code 9, per account): the window rolls, so a slot frees
        // up within hours.
        Some(2_207_042) => return account_limit(retry_after.or(Some(Duration::from_secs(3600)))),
        // Server error, media download timeout, create failed, container expired: a new attempt
        // creates a new container, so these are worth retrying.
        Some(2_207_001 | 2_207_003 | 2_207_032 | 2_207_020) => {
            return PlatformError::Transient {
                status: Some(status),
                reason,
            };
        }
        // Image too large, unsupported media, activity or user restricted, link scrape failed.
        Some(2_207_004 | 2_207_057 | 2_207_051 | 4_279_013 | 1_609_005) => return rejected(reason),
        // App not installed, password changed, expired, unconfirmed user, invalid session, checkpoint.
        Some(458..=460 | 463 | 464 | 467) => return PlatformError::Unauthorized { reason },
        _ => {}
    }
    match code {
        Some(190 | 102 | 10 | 200..=299) => PlatformError::Unauthorized { reason },
        // "Application request limit reached": the app's budget, shared by every account.
        Some(4) => PlatformError::RateLimited {
            retry_after,
            scope: LimitScope::App,
        },
        // User, page, feed-action, custom and business-use-case limits: one account's (or one
        // page's) budget.
        Some(17 | 32 | 341 | 613 | 80_000..=80_014) => account_limit(retry_after),
        Some(1 | 2) => PlatformError::Transient {
            status: Some(status),
            reason,
        },
        // Duplicate post, a policy block, a restricted user: the same post will be refused again.
        Some(506 | 368 | 4_279_013) => rejected(reason),
        _ if is_transient => PlatformError::Transient {
            status: Some(status),
            reason,
        },
        _ => match status {
            401 => PlatformError::Unauthorized { reason },
            429 => account_limit(retry_after),
            s if s >= 500 => PlatformError::Transient {
                status: Some(s),
                reason,
            },
            _ => rejected(reason),
        },
    }
}

/// Reads a non-2xx Graph answer into its outcome class. A throttle while `X-App-Usage` is spent
/// is the app's, whatever the code.
pub async fn classify_graph(res: Response) -> PlatformError {
    let status = res.status();
    let wait = rate_limit_wait(res.headers());
    let app_spent = app_usage_spent(res.headers());
    let body: GraphErrorBody = res.json().await.unwrap_or_default();
    let e = body.error.unwrap_or_default();
    let mut reason = e
        .error_user_msg
        .or(e.message)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    if let Some(code) = e.code {
        reason = match e.error_subcode {
            Some(sub) => format!("{reason} (code {code}, subcode {sub})"),
            None => format!("{reason} (code {code})"),
        };
    }
    match classify_graph_error(
        status.as_u16(),
        e.code,
        e.error_subcode,
        e.is_transient,
        reason,
        wait,
    ) {
        PlatformError::RateLimited { retry_after, .. } if app_spent => PlatformError::RateLimited {
            retry_after,
            scope: LimitScope::App,
        },
        other => other,
    }
}

/// On a token endpoint a dead token (190 and its kin) means the grant itself is dead. Other
/// refusals stay what they are: a token under 24 hours old cannot be refreshed yet, but it is alive.
pub fn as_grant_error(e: PlatformError) -> PlatformError {
    match e {
        PlatformError::Unauthorized { reason } => PlatformError::InvalidGrant { reason },
        other => other,
    }
}

/// Sends one GET to a Meta token endpoint and reads its answer ([`token_answer`]).
pub async fn exchange(
    kind: PlatformKind,
    operation: &'static str,
    req: RequestBuilder,
) -> Result<TokenSet, PlatformError> {
    let res = http::send(kind, operation, false, req).await?;
    token_answer(res).await
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<i64>,
}

/// A Meta token answer (`{access_token, token_type, expires_in}`). Meta issues no refresh tokens:
/// the refreshed access token is itself what is refreshed next time.
pub async fn token_answer(res: Response) -> Result<TokenSet, PlatformError> {
    if !res.status().is_success() {
        return Err(as_grant_error(classify_graph(res).await));
    }
    let t: TokenAnswer = res.json().await.map_err(|e| PlatformError::Transient {
        status: None,
        reason: format!("unreadable token answer: {}", e.without_url()),
    })?;
    Ok(TokenSet {
        access_token: SecretString::from(t.access_token),
        refresh_token: None,
        expires_at: t
            .expires_in
            .map(|s| Utc::now() + chrono::Duration::seconds(s)),
    })
}

/// Sends one Graph call and reads its JSON answer. For a call that creates something, an
/// unreadable success is `OutcomeUnknown`: the object exists and must not be created again.
pub async fn graph_call<T: DeserializeOwned>(
    kind: PlatformKind,
    operation: &'static str,
    creates: bool,
    req: RequestBuilder,
) -> Result<T, PlatformError> {
    let res = http::send(kind, operation, creates, req).await?;
    if !res.status().is_success() {
        return Err(classify_graph(res).await);
    }
    res.json().await.map_err(|e| {
        // Graph URLs carry the access token: never let one into an error.
        let reason = format!("unreadable {operation} answer: {}", e.without_url());
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

/// Graph timestamps are ISO 8601 with a `+0000` offset, which RFC 3339 parsers refuse.
pub fn parse_graph_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The lower bound for read-back, as Graph's `since` parameter wants it (epoch seconds).
pub fn read_back_since(window: chrono::Duration) -> (DateTime<Utc>, String) {
    let since = Utc::now() - window;
    (since, since.timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: Option<i64>, subcode: Option<i64>, status: u16) -> &'static str {
        classify_graph_error(status, code, subcode, false, "r".into(), None).class()
    }

    #[test]
    fn graph_codes_decide_before_the_http_status() {
        assert_eq!(class(Some(190), Some(460), 400), "needs_reauth");
        assert_eq!(class(Some(190), None, 401), "needs_reauth");
        assert_eq!(class(Some(102), None, 400), "needs_reauth");
        assert_eq!(class(Some(200), None, 403), "needs_reauth");
        for code in [4, 17, 32, 613, 80_001, 80_002] {
            assert_eq!(class(Some(code), None, 400), "rate_limited", "code {code}");
        }
        assert_eq!(class(Some(9), Some(2_207_042), 400), "rate_limited");
        for code in [1, 2] {
            assert_eq!(class(Some(code), None, 500), "transient");
        }
        assert_eq!(class(Some(-2), Some(2_207_001), 400), "transient");
        assert_eq!(class(Some(-2), Some(2_207_003), 400), "transient");
        assert_eq!(class(Some(506), None, 400), "rejected");
        assert_eq!(class(Some(368), None, 400), "rejected");
        assert_eq!(class(Some(100), Some(1_609_005), 400), "rejected");
        assert_eq!(class(Some(-1), Some(2_207_004), 400), "rejected");
        assert_eq!(class(None, None, 503), "transient");
        assert_eq!(class(Some(100), None, 400), "rejected");
        assert_eq!(
            classify_graph_error(400, Some(99), None, true, "r".into(), None).class(),
            "transient"
        );
    }

    fn scope(code: i64) -> Option<LimitScope> {
        match classify_graph_error(400, Some(code), None, false, "r".into(), None) {
            PlatformError::RateLimited { scope, .. } => Some(scope),
            _ => None,
        }
    }

    #[test]
    fn code_4_is_the_apps_limit_and_the_others_an_accounts() {
        assert_eq!(scope(4), Some(LimitScope::App));
        for code in [17, 32, 341, 613, 80_001, 80_002, 80_014] {
            assert_eq!(scope(code), Some(LimitScope::Account), "code {code}");
        }
        let mut h = HeaderMap::new();
        assert!(!app_usage_spent(&h));
        h.insert(
            "x-app-usage",
            r#"{"call_count":42,"total_cputime":12,"total_time":30}"#
                .parse()
                .unwrap(),
        );
        assert!(!app_usage_spent(&h));
        h.insert(
            "x-app-usage",
            r#"{"call_count":100,"total_cputime":12,"total_time":30}"#
                .parse()
                .unwrap(),
        );
        assert!(app_usage_spent(&h));
    }

    #[test]
    fn the_business_use_case_header_gives_the_longest_wait() {
        let mut h = HeaderMap::new();
        assert_eq!(rate_limit_wait(&h), None);
        h.insert(
            "x-business-use-case-usage",
            r#"{"112233":[{"type":"pages","call_count":100,"total_cputime":20,"total_time":30,"estimated_time_to_regain_access":7},{"type":"instagram","call_count":5,"total_cputime":1,"total_time":1,"estimated_time_to_regain_access":0}]}"#
                .parse()
                .unwrap(),
        );
        assert_eq!(rate_limit_wait(&h), Some(Duration::from_secs(420)));
        h.insert(
            "x-business-use-case-usage",
            r#"{"1":[{"type":"pages","call_count":10,"estimated_time_to_regain_access":0}]}"#
                .parse()
                .unwrap(),
        );
        assert_eq!(rate_limit_wait(&h), None);
    }

    #[test]
    fn graph_timestamps_with_a_bare_offset_parse() {
        let t = parse_graph_time("2026-03-01T12:30:00+0000").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-01T12:30:00+00:00");
        assert!(parse_graph_time("2026-03-01T12:30:00Z").is_some());
        assert!(parse_graph_time("yesterday").is_none());
    }

    #[test]
    fn graph_ids_cannot_change_the_path() {
        assert!(checked_id("1234_5678").is_ok());
        assert!(checked_id("../me").is_err());
        assert!(checked_id("1?fields=x").is_err());
        assert!(checked_id("").is_err());
    }
}
