//! X (API v2): `POST /2/tweets`, `GET /2/users/me`, follower lists paged by `next_token`, and the
//! OAuth 2.0 refresh grant, whose refresh tokens rotate; Herald's X app (PKCE, Basic client
//! authentication, X's documented revocation endpoint).
//!
//! X has no idempotency key, so a lost answer is settled by reading the user's recent timeline
//! ([`Platform::find_published`]). A share's images are uploaded first ([`media`]).

mod media;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use oauth2::AuthType;
use reqwest::{Client, Response, StatusCode, header::HeaderMap};
use serde::Deserialize;

use crate::{
    config::PlatformApp,
    error::{LimitScope, PlatformError},
    http,
    kind::PlatformKind,
    media::{Count, ImageType, MediaRules},
    oauth::{ClientAuth, OAuthApp, OAuthClient, bearer, refresh_grant},
    platform::{Capabilities, Platform},
    text::{lead, post_matches},
    types::{
        Account, AppBudget, Credentials, FollowerAccount, FollowerPage, Invalid, PostRequest,
        Profile, Published, Relation, TokenSet,
    },
};

pub const DEFAULT_BASE: &str = "https://api.x.com";
pub const DEFAULT_TOKEN_URL: &str = "https://api.x.com/2/oauth2/token";
/// X's token revocation endpoint (RFC 7009), beside its token endpoint.
pub const DEFAULT_REVOKE_URL: &str = "https://api.x.com/2/oauth2/revoke";
const AUTHORIZE_URL: &str = "https://x.com/i/oauth2/authorize";
/// `media.write` uploads a share's images (a grant without it gets a refusal naming the fix).
const SCOPES: &str = "tweet.read tweet.write users.read follows.read offline.access media.write";

const MAX_WEIGHTED_LENGTH: usize = 280;
/// Every URL is wrapped in t.co and counts as this many characters, whatever its length.
const URL_WEIGHT: usize = 23;
/// How far back read-back looks. Reads are billed per post returned, so both the window and the
/// page are kept small: a share is settled within hours of its lost answer.
const READ_BACK_WINDOW: chrono::Duration = chrono::Duration::hours(72);
const READ_BACK_PAGE: &str = "20";
/// When a usage cap is hit and X says nothing about when it lifts. The cap is monthly or
/// credit-based, so a retry at the usual reset would only be refused again.
const USAGE_CAP_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Herald's X app as configured (`HERALD_X_*`), on X's own endpoints unless overridden.
pub fn oauth_app(app: &PlatformApp) -> OAuthApp {
    OAuthApp {
        client: app.client(DEFAULT_TOKEN_URL),
        authorize_url: app
            .authorize_url
            .clone()
            .unwrap_or_else(|| AUTHORIZE_URL.to_owned()),
        revoke_url: revoke_url(app),
        scopes: SCOPES,
        pkce: true,
        auth: AuthType::BasicAuth,
    }
}

/// The app's revocation endpoint: `HERALD_X_REVOKE_URL` where configured, else X's documented
/// `POST /2/oauth2/revoke` while the app uses X's own token endpoint. Never guessed from another
/// token URL: an RFC 7009 server may put revocation anywhere, and a token must not be sent to a
/// server that did not issue it.
fn revoke_url(app: &PlatformApp) -> Option<String> {
    if let Some(url) = &app.revoke_url {
        return Some(url.clone());
    }
    let own_token_url = app
        .token_url
        .as_deref()
        .is_none_or(|t| t == DEFAULT_TOKEN_URL);
    own_token_url.then(|| DEFAULT_REVOKE_URL.to_owned())
}

#[derive(Debug, Clone)]
pub struct X {
    http: Client,
    base: String,
    oauth: OAuthClient,
    /// The app connect flows use; `None` for a client built without one (its tests).
    app: Option<OAuthApp>,
}

impl X {
    pub fn new(http: Client, base_url: impl Into<String>, oauth: OAuthClient) -> Self {
        Self {
            http,
            base: base_url.into().trim_end_matches('/').to_owned(),
            oauth,
            app: None,
        }
    }

    /// X with Herald's app as configured.
    pub fn from_config(http: Client, app: &PlatformApp) -> Self {
        Self {
            app: Some(oauth_app(app)),
            ..Self::new(
                http,
                app.api_base_or(DEFAULT_BASE),
                app.client(DEFAULT_TOKEN_URL),
            )
        }
    }

    /// The post text: the text (or else the title), a blank line, the URL.
    pub fn compose(post: &PostRequest) -> String {
        match lead(post) {
            Some(lead) => format!("{lead}\n\n{}", post.url),
            None => post.url.clone(),
        }
    }

    fn user_id(account: &Account) -> Result<&str, PlatformError> {
        let id = account.platform_account_id.as_str();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PlatformError::Rejected {
                status: 0,
                reason: "the connection has no numeric X user id".into(),
            });
        }
        Ok(id)
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        creds: &Credentials,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, PlatformError> {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .header("authorization", bearer(creds)?)
            .query(query);
        let res = http::send(PlatformKind::X, operation, false, req).await?;
        if !res.status().is_success() {
            return Err(classify(res, creds.refresh_token.is_some()).await);
        }
        res.json().await.map_err(|e| PlatformError::Transient {
            status: None,
            reason: format!("unreadable {operation} answer: {e}"),
        })
    }
}

/// X's weighted length (twitter-text config v3, checked against
/// github.com/twitter/twitter-text `config/v3.json`): code points in U+0000–U+10FF, U+2000–U+200D,
/// U+2010–U+201F and U+2032–U+2037 weigh 1, everything else 2, an emoji sequence 2, and each
/// `http(s)://` URL 23. X normalizes to NFC first; counting un-normalized text can only count more.
pub fn weighted_length(text: &str) -> usize {
    text.split_inclusive(char::is_whitespace)
        .map(|piece| {
            let word = piece.trim_end_matches(char::is_whitespace);
            let lower = word.get(..8).unwrap_or(word).to_ascii_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") {
                URL_WEIGHT + char_weights(&piece[word.len()..])
            } else {
                char_weights(piece)
            }
        })
        .sum()
}

fn char_weights(s: &str) -> usize {
    let light = |cp: u32| matches!(cp, 0..=4351 | 8192..=8205 | 8208..=8223 | 8242..=8247);
    let mut total = 0;
    let mut after_emoji = false;
    let mut joined = false;
    let mut open_flag = false;
    for c in s.chars() {
        let cp = c as u32;
        if joined {
            // The code point after a zero-width joiner belongs to the same emoji sequence.
            joined = false;
            continue;
        }
        match cp {
            0x200D if after_emoji => joined = true,
            0xFE00..=0xFE0F | 0x1F3FB..=0x1F3FF | 0xE0020..=0xE007F => {}
            // A keycap sequence ("1️⃣") counts as an emoji: the digit weighed 1, this makes it 2.
            0x20E3 => total += 1,
            0x1F1E6..=0x1F1FF => {
                // Two regional indicators make one flag.
                if !open_flag {
                    total += 2;
                }
                open_flag = !open_flag;
                after_emoji = true;
            }
            _ => {
                open_flag = false;
                after_emoji = !light(cp);
                total += if light(cp) { 1 } else { 2 };
            }
        }
    }
    total
}

/// The wait a 429 asks for. A 24-hour limit that is spent (`x-app-limit-24hour-*`, then
/// `x-user-limit-24hour-*`, sent on `POST /2/tweets`) wins over the 15-minute window
/// (`x-rate-limit-reset`); resets are epoch seconds, corrected for clock skew with `Date`.
pub fn rate_limit_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let reset_name = ["x-app-limit-24hour", "x-user-limit-24hour"]
        .into_iter()
        .find(|p| spent(headers, p))
        .map_or_else(|| "x-rate-limit-reset".to_owned(), |p| format!("{p}-reset"));
    let reset_at = header(headers, &reset_name)?
        .parse::<i64>()
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, 0))?;
    Some(
        (reset_at - server_now(headers, now))
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// A 429: the wait it asks for, and whose limit it is.
fn rate_limited(headers: &HeaderMap) -> PlatformError {
    PlatformError::RateLimited {
        retry_after: rate_limit_wait(headers, Utc::now()),
        scope: limit_scope(headers),
    }
}

/// Whose limit a 429 is: the app's when its 24-hour budget is spent (every user of the app
/// waits), else the user's (the per-user 24-hour and 15-minute windows).
pub fn limit_scope(headers: &HeaderMap) -> LimitScope {
    if spent(headers, "x-app-limit-24hour") {
        LimitScope::App
    } else {
        LimitScope::Account
    }
}

/// The app's 24-hour budget as `POST /2/tweets` reports it, the reset moved onto Herald's clock.
pub fn app_budget(headers: &HeaderMap, now: DateTime<Utc>) -> Option<AppBudget> {
    let number = |suffix: &str| header(headers, &format!("x-app-limit-24hour-{suffix}"));
    let reset_at = DateTime::from_timestamp(number("reset")?.parse().ok()?, 0)?;
    Some(AppBudget {
        limit: number("limit")?.parse().ok()?,
        remaining: number("remaining")?.parse().ok()?,
        resets_at: now + (reset_at - server_now(headers, now)),
    })
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn spent(headers: &HeaderMap, prefix: &str) -> bool {
    header(headers, &format!("{prefix}-remaining")) == Some("0")
}

/// The server's clock from `Date`, else ours.
fn server_now(headers: &HeaderMap, now: DateTime<Utc>) -> DateTime<Utc> {
    header(headers, "date")
        .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        .map_or(now, |d| d.with_timezone(&Utc))
}

/// X's problem JSON (`{title, detail, type, status}`); some auth-layer answers use `errors[]`.
#[derive(Deserialize, Default)]
struct Problem {
    title: Option<String>,
    detail: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    errors: Vec<ProblemItem>,
}

#[derive(Deserialize)]
struct ProblemItem {
    message: Option<String>,
}

/// Classifies a non-2xx answer from the API (not the token endpoint). `has_refresh` turns a 401
/// into `TokenExpired`: X access tokens live two hours and a refresh revives them.
async fn classify(res: Response, has_refresh: bool) -> PlatformError {
    let status = res.status();
    let headers = res.headers().clone();
    let problem: Problem = res.json().await.unwrap_or_default();
    let kind = problem.kind.unwrap_or_default();
    let reason = problem
        .detail
        .or(problem.title)
        .or_else(|| problem.errors.into_iter().find_map(|e| e.message))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    match status {
        StatusCode::UNAUTHORIZED if has_refresh => PlatformError::TokenExpired,
        StatusCode::UNAUTHORIZED => PlatformError::Unauthorized { reason },
        // The token is of the wrong kind or lacks a scope: only a new authorization fixes it.
        StatusCode::FORBIDDEN if kind.ends_with("/unsupported-authentication") => {
            PlatformError::Unauthorized { reason }
        }
        // Herald's own app lacks access to the endpoint: an operator's fix, and permanent for this share.
        StatusCode::FORBIDDEN if kind.ends_with("/client-forbidden") => PlatformError::Rejected {
            status: 403,
            reason: format!("the X app is not allowed this call: {reason}"),
        },
        // The project's monthly cap or credits: every user of the app is stopped.
        StatusCode::TOO_MANY_REQUESTS if kind.ends_with("/usage-capped") => {
            let wait = rate_limit_wait(&headers, Utc::now())
                .filter(|w| !w.is_zero())
                .unwrap_or(USAGE_CAP_WAIT);
            PlatformError::RateLimited {
                retry_after: Some(wait),
                scope: LimitScope::App,
            }
        }
        StatusCode::TOO_MANY_REQUESTS => rate_limited(&headers),
        s if s.is_server_error() => PlatformError::Transient {
            status: Some(s.as_u16()),
            reason,
        },
        // 403 duplicate content / "not permitted", 400 invalid request: posting again cannot help.
        s => PlatformError::Rejected {
            status: s.as_u16(),
            reason,
        },
    }
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct User {
    id: String,
    username: String,
    name: Option<String>,
    public_metrics: Option<PublicMetrics>,
}

#[derive(Deserialize)]
struct PublicMetrics {
    followers_count: Option<u64>,
}

#[derive(Deserialize)]
struct UserPage {
    #[serde(default)]
    data: Vec<User>,
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    next_token: Option<String>,
}

#[derive(Deserialize)]
struct Timeline {
    #[serde(default)]
    data: Vec<Tweet>,
}

#[derive(Deserialize)]
struct Tweet {
    id: String,
    text: String,
    entities: Option<Entities>,
}

#[derive(Deserialize)]
struct Entities {
    #[serde(default)]
    urls: Vec<UrlEntity>,
}

#[derive(Deserialize)]
struct UrlEntity {
    expanded_url: Option<String>,
    unwound_url: Option<String>,
}

fn status_url(id: &str) -> String {
    // The account-independent form; x.com redirects it to /<username>/status/<id>.
    format!("https://x.com/i/web/status/{id}")
}

#[async_trait]
impl Platform for X {
    fn kind(&self) -> PlatformKind {
        PlatformKind::X
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotency_window: None,
            refresh: true,
            followers: true,
            requires_image: false,
            checkpoint_settles_outcome: false,
        }
    }

    /// The one-shot upload takes JPEG, PNG and WebP up to 5 MB (a GIF needs the chunked upload,
    /// which Herald does not do); 4 per post; alt text up to 1,000 characters.
    fn media_rules(&self) -> MediaRules {
        MediaRules {
            max_images: 4,
            max_alt: Some((1000, Count::Chars)),
            types: &[ImageType::Jpeg, ImageType::Png, ImageType::Webp],
            max_bytes: 5 * 1024 * 1024,
            max_pixels: None,
        }
    }

    fn validate(&self, _account: &Account, post: &PostRequest) -> Result<(), Invalid> {
        let weighted = weighted_length(&Self::compose(post));
        if weighted > MAX_WEIGHTED_LENGTH {
            return Err(Invalid {
                field: "text",
                code: "text_too_long",
                message: format!(
                    "X allows {MAX_WEIGHTED_LENGTH} weighted characters (a URL counts as {URL_WEIGHT}, most emoji and CJK as 2); this share has {weighted}"
                ),
            });
        }
        Ok(())
    }

    async fn verify(
        &self,
        _account: &Account,
        creds: &Credentials,
    ) -> Result<Profile, PlatformError> {
        let u: Data<User> = self
            .get_json(
                "verify",
                creds,
                "/2/users/me",
                &[("user.fields", "public_metrics")],
            )
            .await?;
        Ok(Profile {
            platform_account_id: u.data.id,
            handle: u.data.username,
            display_name: crate::types::display_name(u.data.name),
            followers_count: u.data.public_metrics.and_then(|m| m.followers_count),
        })
    }

    async fn share(
        &self,
        _account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Published, PlatformError> {
        let (mut media_ids, mut reused) = self.upload_media(creds, post, false).await?;
        let res = loop {
            let mut body = serde_json::json!({ "text": Self::compose(post) });
            if !media_ids.is_empty() {
                body["media"] = serde_json::json!({ "media_ids": media_ids });
            }
            let req = self
                .http
                .post(format!("{}/2/tweets", self.base))
                .header("authorization", bearer(creds)?)
                .json(&body);
            let res = http::send(self.kind(), "share", true, req).await?;
            // Saved uploads X forgot before the time it gave: nothing was posted (a 400 is a
            // refusal of the request); upload afresh, once.
            if reused && res.status() == StatusCode::BAD_REQUEST {
                (media_ids, reused) = self.upload_media(creds, post, true).await?;
                continue;
            }
            break res;
        };
        if !res.status().is_success() {
            return Err(classify(res, creds.refresh_token.is_some()).await);
        }
        let app_budget = app_budget(res.headers(), Utc::now());
        // The post exists now; an unreadable body is not a reason to post again.
        let created: Data<Created> =
            res.json()
                .await
                .map_err(|e| PlatformError::OutcomeUnknown {
                    reason: format!("unreadable post answer: {e}"),
                })?;
        let post_url = Some(status_url(&created.data.id));
        Ok(Published {
            post_id: created.data.id,
            post_url,
            app_budget,
        })
    }

    /// Reads the author's posts from the last [`READ_BACK_WINDOW`] (replies and reposts excluded)
    /// and matches the share's URL against the expanded t.co links, since X rewrites URLs in text.
    async fn find_published(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Option<Published>, PlatformError> {
        let id = Self::user_id(account)?;
        let since = (Utc::now() - READ_BACK_WINDOW)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let query = [
            ("max_results", READ_BACK_PAGE),
            ("exclude", "replies,retweets"),
            ("tweet.fields", "created_at,entities"),
            ("start_time", since.as_str()),
        ];
        let timeline: Timeline = self
            .get_json(
                "find_published",
                creds,
                &format!("/2/users/{id}/tweets"),
                &query,
            )
            .await?;
        let found = timeline.data.into_iter().find(|t| {
            let links: Vec<&str> = t
                .entities
                .iter()
                .flat_map(|e| &e.urls)
                .flat_map(|u| [u.expanded_url.as_deref(), u.unwound_url.as_deref()])
                .flatten()
                .collect();
            post_matches(post, lead(post), &t.text, &links)
        });
        Ok(found.map(|t| Published {
            post_url: Some(status_url(&t.id)),
            post_id: t.id,
            app_budget: None,
        }))
    }

    async fn refresh(
        &self,
        _account: &Account,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        let Some(rt) = &creds.refresh_token else {
            // Without `offline.access` X issues no refresh token, and the access token dies in two hours.
            return Err(PlatformError::InvalidGrant {
                reason: "no refresh token stored; reconnect the account".into(),
            });
        };
        refresh_grant(
            self.kind(),
            &self.http,
            &self.oauth,
            rt,
            ClientAuth::BasicOrPublic,
            rate_limited,
        )
        .await
    }

    fn oauth_app(&self) -> Option<&OAuthApp> {
        self.app.as_ref()
    }

    async fn followers_page(
        &self,
        account: &Account,
        creds: &Credentials,
        relation: Relation,
        cursor: Option<&str>,
    ) -> Result<FollowerPage, PlatformError> {
        let id = Self::user_id(account)?;
        let path = match relation {
            Relation::Followers => format!("/2/users/{id}/followers"),
            Relation::Follows => format!("/2/users/{id}/following"),
        };
        let mut query = vec![("max_results", "1000"), ("user.fields", "username")];
        if let Some(c) = cursor {
            query.push(("pagination_token", c));
        }
        let page: UserPage = self.get_json("followers", creds, &path, &query).await?;
        Ok(FollowerPage {
            accounts: page
                .data
                .into_iter()
                .map(|u| FollowerAccount {
                    platform_account_id: u.id,
                    handle: u.username,
                })
                .collect(),
            next_cursor: page.meta.and_then(|m| m.next_token),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(text: &str) -> PostRequest {
        PostRequest {
            share_id: "shr_1".into(),
            url: "https://example.com/a/very/long/path/that/is/far/longer/than/twenty/three/characters".into(),
            title: None,
            text: Some(text.into()),
            image_url: None,
            media: Vec::new(),
            idempotency_key: "k".into(),
            checkpoint: Default::default(),
        }
    }

    #[test]
    fn urls_weigh_twenty_three_and_cjk_and_emoji_weigh_two() {
        assert_eq!(weighted_length("hello"), 5);
        assert_eq!(
            weighted_length("see https://example.com/a/very/long/path/indeed"),
            4 + 23
        );
        assert_eq!(weighted_length("日本語"), 6);
        assert_eq!(weighted_length("‘quotes’ — dash"), 15);
        assert_eq!(weighted_length("😀"), 2);
        // A family (ZWJ sequence), a skin-toned thumb, a flag and a keycap each count as one emoji.
        assert_eq!(weighted_length("👨\u{200D}👩\u{200D}👧"), 2);
        assert_eq!(weighted_length("👍🏽"), 2);
        assert_eq!(weighted_length("🇫🇷🇩🇪"), 4);
        assert_eq!(weighted_length("1\u{FE0F}\u{20E3}"), 2);
    }

    #[test]
    fn a_share_fits_in_two_hundred_eighty_weighted_characters() {
        let x = X::new(
            Client::new(),
            DEFAULT_BASE,
            OAuthClient {
                client_id: "c".into(),
                client_secret: None,
                token_url: DEFAULT_TOKEN_URL.into(),
            },
        );
        let account = Account {
            platform_account_id: "1".into(),
            handle: "a".into(),
            extras: Default::default(),
        };
        // 255 + "\n\n" + 23 = 280.
        assert!(x.validate(&account, &post(&"x".repeat(255))).is_ok());
        let err = x.validate(&account, &post(&"x".repeat(256))).unwrap_err();
        assert_eq!((err.field, err.code), ("text", "text_too_long"));
        // 127 × 2 + 2 + 23 = 279; one more is 281.
        assert!(x.validate(&account, &post(&"字".repeat(127))).is_ok());
        assert!(x.validate(&account, &post(&"字".repeat(128))).is_err());
    }

    #[test]
    fn the_spent_daily_limit_wins_over_the_window_and_date_corrects_skew() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-rate-limit-reset",
            (now.timestamp() + 120).to_string().parse().unwrap(),
        );
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(120)));
        h.insert("x-user-limit-24hour-remaining", "0".parse().unwrap());
        h.insert(
            "x-user-limit-24hour-reset",
            (now.timestamp() + 3600).to_string().parse().unwrap(),
        );
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(3600)));
        let server_now = (now + chrono::Duration::seconds(600)).to_rfc2822();
        h.insert("date", server_now.parse().unwrap());
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(3000)));
        assert_eq!(rate_limit_wait(&HeaderMap::new(), now), None);
    }

    #[test]
    fn a_spent_app_budget_is_the_apps_limit_and_its_reset_moves_onto_our_clock() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-app-limit-24hour-limit", "10000".parse().unwrap());
        h.insert("x-app-limit-24hour-remaining", "42".parse().unwrap());
        h.insert(
            "x-app-limit-24hour-reset",
            (now.timestamp() + 7200).to_string().parse().unwrap(),
        );
        h.insert(
            "date",
            (now + chrono::Duration::seconds(60))
                .to_rfc2822()
                .parse()
                .unwrap(),
        );
        assert_eq!(
            app_budget(&h, now),
            Some(AppBudget {
                limit: 10_000,
                remaining: 42,
                resets_at: now + chrono::Duration::seconds(7140),
            })
        );
        h.insert("x-user-limit-24hour-remaining", "0".parse().unwrap());
        assert_eq!(limit_scope(&h), LimitScope::Account);
        h.insert("x-app-limit-24hour-remaining", "0".parse().unwrap());
        assert_eq!(limit_scope(&h), LimitScope::App);
        // Both spent: the app's reset is the one every share waits for.
        h.insert(
            "x-user-limit-24hour-reset",
            (now.timestamp() + 60).to_string().parse().unwrap(),
        );
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(7140)));
        assert_eq!(app_budget(&HeaderMap::new(), now), None);
    }
}
