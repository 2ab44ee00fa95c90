//! Facebook Pages (Graph API): `POST /{page-id}/feed` with the page token, `GET /{page-id}`, and
//! read-back from the page feed. Page tokens taken from a long-lived user token do not expire and
//! there is no refresh grant: [`Facebook::exchange_long_lived`] is the one-off exchange done at
//! connect time.
//!
//! The Graph API helpers here (error envelope, `X-Business-Use-Case-Usage`, timestamps) are shared
//! with Instagram and Threads, which answer in the same shape.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::{Client, Response, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, de::DeserializeOwned};

use super::{
    Account, Capabilities, Credentials, Invalid, Platform, PlatformError, PlatformKind,
    PostRequest, Profile, Published, TokenSet, http,
    x::{OAuthClient, lead, post_matches},
};

pub const DEFAULT_BASE: &str = "https://graph.facebook.com";
/// Graph versions live about two years; pinned so a default change cannot alter answers.
pub const API_VERSION: &str = "v24.0";
pub const DEFAULT_TOKEN_URL: &str = "https://graph.facebook.com/v24.0/oauth/access_token";

/// Facebook's own limit on a post's text (Postiz uses the same figure; Meta's docs do not state it).
const MAX_MESSAGE_CHARS: usize = 63_206;
const READ_BACK_WINDOW: chrono::Duration = chrono::Duration::hours(72);

#[derive(Debug, Clone)]
pub struct Facebook {
    http: Client,
    base: String,
}

impl Facebook {
    pub fn new(http: Client, base_url: impl Into<String>) -> Self {
        Self {
            http,
            base: base_url.into().trim_end_matches('/').to_owned(),
        }
    }

    /// The page the connection posts to: `extras.page_id`, else the account id.
    fn page_id(account: &Account) -> Result<&str, PlatformError> {
        checked_id(
            account
                .extra_str("page_id")
                .unwrap_or(&account.platform_account_id),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{API_VERSION}/{path}", self.base)
    }

    /// Trades a short-lived user token for a ~60-day one (`grant_type=fb_exchange_token`), using
    /// the app's id and secret and `app.token_url`. This is not a refresh: an expired token cannot
    /// be exchanged, and page tokens read with the result (`GET /me/accounts`) do not expire.
    pub async fn exchange_long_lived(
        &self,
        app: &OAuthClient,
        short_lived: &SecretString,
    ) -> Result<TokenSet, PlatformError> {
        let secret = app
            .client_secret
            .as_ref()
            .ok_or_else(|| PlatformError::Rejected {
                status: 0,
                reason: "the Facebook app secret is not configured".into(),
            })?;
        let query = [
            ("grant_type", "fb_exchange_token"),
            ("client_id", app.client_id.as_str()),
            ("client_secret", secret.expose_secret()),
            ("fb_exchange_token", short_lived.expose_secret()),
        ];
        let req = self.http.get(&app.token_url).query(&query);
        let res = http::send(PlatformKind::FacebookPages, "exchange_token", false, req).await?;
        token_answer(res).await
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
    match subcode {
        // Instagram's publishing quota (code 9): the window rolls, so a slot frees up within hours.
        Some(2_207_042) => {
            return PlatformError::RateLimited {
                retry_after: retry_after.or(Some(Duration::from_secs(3600))),
            };
        }
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
        Some(4 | 17 | 32 | 341 | 613 | 80_000..=80_014) => {
            PlatformError::RateLimited { retry_after }
        }
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
            429 => PlatformError::RateLimited { retry_after },
            s if s >= 500 => PlatformError::Transient {
                status: Some(s),
                reason,
            },
            _ => rejected(reason),
        },
    }
}

/// Reads a non-2xx Graph answer into its outcome class.
pub async fn classify_graph(res: Response) -> PlatformError {
    let status = res.status();
    let wait = rate_limit_wait(res.headers());
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
    classify_graph_error(
        status.as_u16(),
        e.code,
        e.error_subcode,
        e.is_transient,
        reason,
        wait,
    )
}

/// On a token endpoint a dead token (190 and its kin) means the grant itself is dead. Other
/// refusals stay what they are: a token under 24 hours old cannot be refreshed yet, but it is alive.
pub fn as_grant_error(e: PlatformError) -> PlatformError {
    match e {
        PlatformError::Unauthorized { reason } => PlatformError::InvalidGrant { reason },
        other => other,
    }
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
    req: reqwest::RequestBuilder,
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

#[derive(Deserialize)]
struct Created {
    id: String,
    permalink_url: Option<String>,
}

#[derive(Deserialize)]
struct Page {
    id: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Feed {
    #[serde(default)]
    data: Vec<FeedPost>,
}

#[derive(Deserialize)]
struct FeedPost {
    id: String,
    message: Option<String>,
    link: Option<String>,
    created_time: Option<String>,
    permalink_url: Option<String>,
}

fn post_url(id: &str) -> String {
    format!("https://www.facebook.com/{id}")
}

#[async_trait]
impl Platform for Facebook {
    fn kind(&self) -> PlatformKind {
        PlatformKind::FacebookPages
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotency_window: None,
            refresh: false,
            followers: false,
            requires_image: false,
        }
    }

    fn validate(&self, _account: &Account, post: &PostRequest) -> Result<(), Invalid> {
        let chars = lead(post).map_or(0, |l| l.chars().count());
        if chars > MAX_MESSAGE_CHARS {
            return Err(Invalid {
                field: "text",
                code: "text_too_long",
                message: format!(
                    "Facebook allows {MAX_MESSAGE_CHARS} characters in a post; this share has {chars}"
                ),
            });
        }
        Ok(())
    }

    async fn verify(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<Profile, PlatformError> {
        let page = Self::page_id(account)?;
        let req = self
            .http
            .get(self.url(page))
            .query(&[("fields", "id,name"), ("access_token", token(creds)?)]);
        let p: Page = graph_call(self.kind(), "verify", false, req).await?;
        Ok(Profile {
            handle: p.name.unwrap_or_else(|| p.id.clone()),
            platform_account_id: p.id,
            followers_count: None,
        })
    }

    /// Facebook scrapes the link's Open Graph tags for the card, so only `message` and `link` are
    /// sent. There is no duplicate protection beyond code 506 for an identical message.
    async fn share(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Published, PlatformError> {
        let page = Self::page_id(account)?;
        let mut form = vec![
            ("link", post.url.as_str()),
            ("published", "true"),
            ("fields", "id,permalink_url"),
            ("access_token", token(creds)?),
        ];
        if let Some(message) = lead(post) {
            form.push(("message", message));
        }
        let req = self
            .http
            .post(self.url(&format!("{page}/feed")))
            .form(&form);
        let c: Created = graph_call(self.kind(), "share", true, req).await?;
        let post_url = c.permalink_url.unwrap_or_else(|| post_url(&c.id));
        Ok(Published {
            post_id: c.id,
            post_url: Some(post_url),
        })
    }

    /// Reads the page feed since [`READ_BACK_WINDOW`] and matches the share's URL against each
    /// post's `link` (or its message) and the share's words against the message.
    async fn find_published(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Option<Published>, PlatformError> {
        let page = Self::page_id(account)?;
        let (since, since_param) = read_back_since(READ_BACK_WINDOW);
        let query = [
            ("fields", "id,message,link,created_time,permalink_url"),
            ("since", since_param.as_str()),
            ("limit", "25"),
            ("access_token", token(creds)?),
        ];
        let req = self
            .http
            .get(self.url(&format!("{page}/feed")))
            .query(&query);
        let feed: Feed = graph_call(self.kind(), "find_published", false, req).await?;
        let found = feed.data.into_iter().find(|p| {
            let recent = p
                .created_time
                .as_deref()
                .and_then(parse_graph_time)
                .is_none_or(|t| t >= since);
            let links: Vec<&str> = p.link.as_deref().into_iter().collect();
            recent && post_matches(post, lead(post), p.message.as_deref().unwrap_or(""), &links)
        });
        Ok(found.map(|p| Published {
            post_url: Some(p.permalink_url.unwrap_or_else(|| post_url(&p.id))),
            post_id: p.id,
        }))
    }

    // `refresh` stays unsupported: a page token has no refresh grant, and the long-lived user
    // token it came from can only be re-exchanged while valid (see `exchange_long_lived`).

    // `followers_page` stays unsupported: the Graph API lists no individual followers of a page;
    // only the `followers_count` and `fan_count` fields exist.
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
