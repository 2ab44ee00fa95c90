//! Mastodon: `POST /api/v1/statuses` with an `Idempotency-Key`, `verify_credentials`, and
//! follower lists paged by the `Link` header. Tokens never expire and there is no refresh: a 401
//! or 403 means the user must reconnect.
//!
//! Mastodon has no global app: Herald registers one per instance and tenant
//! ([`register_app`]), and connect flows run with that app ([`oauth_app`]; PKCE from 4.3 on).
//! A share's images are uploaded first ([`media`]) and attached by id.

mod media;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use oauth2::AuthType;
use reqwest::{Client, Response, StatusCode, header::HeaderMap};
use secrecy::SecretString;
use serde::Deserialize;
use unicode_segmentation::UnicodeSegmentation;

use crate::{
    error::{LimitScope, PlatformError},
    http,
    kind::PlatformKind,
    media::{Count, ImageType, MediaRules},
    oauth::{CodeToken, Granted, OAuthApp, OAuthClient, bearer},
    platform::{Capabilities, Platform},
    types::{
        Account, Credentials, FollowerAccount, FollowerPage, Invalid, PostRequest, Profile,
        Published, Relation,
    },
};

/// Herald's scopes on an instance: posting, media, and `read:accounts` for `verify_credentials`
/// (understood by every version; `profile` only from 4.4).
/// `write:media` uploads a share's images (connections granted before Herald asked for it get a
/// refusal naming the fix on their first share with images).
pub const SCOPES: &str = "write:statuses write:media read:accounts";

/// Mastodon counts every URL as this many characters, whatever its length.
const URL_WEIGHT: usize = 23;
const DEFAULT_MAX_CHARACTERS: usize = 500;
/// Mastodon remembers an `Idempotency-Key` for an hour; retries inside that window cannot post twice.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(3600);

/// Herald's app on one instance, as registered there.
pub fn oauth_app(instance: &str, client_id: String, secret: SecretString) -> OAuthApp {
    OAuthApp {
        client: OAuthClient {
            client_id,
            client_secret: Some(secret),
            token_url: format!("{instance}/oauth/token"),
        },
        authorize_url: format!("{instance}/oauth/authorize"),
        revoke_url: Some(format!("{instance}/oauth/revoke")),
        scopes: SCOPES,
        pkce: true,
        auth: AuthType::RequestBody,
    }
}

/// The credentials `POST /api/v1/apps` hands out.
#[derive(Debug)]
pub struct RegisteredApp {
    pub client_id: String,
    pub client_secret: SecretString,
}

/// Registers Herald's app on an instance (`POST /api/v1/apps`) for `redirect_uri`.
pub async fn register_app(
    http_client: &Client,
    instance: &str,
    redirect_uri: &str,
) -> Result<RegisteredApp, PlatformError> {
    #[derive(Deserialize)]
    struct Registered {
        client_id: String,
        client_secret: String,
    }
    let req = http_client.post(format!("{instance}/api/v1/apps")).form(&[
        ("client_name", "Herald"),
        ("redirect_uris", redirect_uri),
        ("scopes", SCOPES),
    ]);
    let res = http::send(PlatformKind::Mastodon, "register_app", false, req).await?;
    if !res.status().is_success() {
        return Err(PlatformError::Rejected {
            status: res.status().as_u16(),
            reason: "POST /api/v1/apps was refused".into(),
        });
    }
    let reg: Registered = res.json().await.map_err(|_| PlatformError::Rejected {
        status: 200,
        reason: "unreadable app registration".into(),
    })?;
    Ok(RegisteredApp {
        client_id: reg.client_id,
        client_secret: SecretString::from(reg.client_secret),
    })
}

#[derive(Debug, Clone)]
pub struct Mastodon {
    http: Client,
    /// How many times an upload still processing is checked before the share is retried later.
    processing_checks: u32,
}

impl Mastodon {
    pub fn new(http: Client) -> Self {
        Self {
            http,
            processing_checks: media::PROCESSING_CHECKS,
        }
    }

    /// Fewer checks of an upload still processing (tests of an upload that never finishes).
    pub fn with_processing_checks(mut self, checks: u32) -> Self {
        self.processing_checks = checks;
        self
    }

    fn base(account: &Account) -> Result<&str, PlatformError> {
        account
            .extra_str("instance_url")
            .map(|u| u.trim_end_matches('/'))
            .ok_or_else(|| PlatformError::Rejected {
                status: 0,
                reason: "connection has no instance_url".into(),
            })
    }

    /// The status text: the text (or else the title), a blank line, the URL.
    pub fn compose(post: &PostRequest) -> String {
        let lead = post
            .text
            .as_deref()
            .or(post.title.as_deref())
            .map(str::trim)
            .filter(|s| !s.is_empty());
        match lead {
            Some(lead) => format!("{lead}\n\n{}", post.url),
            None => post.url.clone(),
        }
    }

    fn max_characters(account: &Account) -> usize {
        account
            .extras
            .get("max_characters")
            .and_then(|v| v.as_u64())
            .map_or(DEFAULT_MAX_CHARACTERS, |n| n as usize)
    }
}

#[derive(Deserialize)]
struct Status {
    id: String,
    url: Option<String>,
}

#[derive(Deserialize)]
struct MastodonAccount {
    id: String,
    acct: String,
    display_name: Option<String>,
    followers_count: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// The wait a 429 asks for: `Retry-After` if present, else `X-RateLimit-Reset` (an ISO 8601 time
/// on Mastodon, epoch seconds on some other servers), corrected for clock skew with `Date`.
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
    let reset = get("x-ratelimit-reset")?;
    let reset_at = DateTime::parse_from_rfc3339(reset)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            reset
                .parse::<i64>()
                .ok()
                .and_then(|s| DateTime::from_timestamp(s, 0))
        })?;
    let server_now = get("date")
        .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        .map_or(now, |d| d.with_timezone(&Utc));
    Some((reset_at - server_now).to_std().unwrap_or(Duration::ZERO))
}

async fn classify(res: Response) -> PlatformError {
    let status = res.status();
    let headers = res.headers().clone();
    let reason = res
        .json::<ErrorBody>()
        .await
        .map(|b| b.error)
        .unwrap_or_else(|_| status.canonical_reason().unwrap_or("error").to_owned());
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PlatformError::Unauthorized { reason },
        StatusCode::TOO_MANY_REQUESTS => PlatformError::RateLimited {
            retry_after: rate_limit_wait(&headers, Utc::now()),
            // Per account (or per IP): neither has an app shared by every tenant.
            scope: LimitScope::Account,
        },
        s if s.is_server_error() => PlatformError::Transient {
            status: Some(s.as_u16()),
            reason,
        },
        s => PlatformError::Rejected {
            status: s.as_u16(),
            reason,
        },
    }
}

#[async_trait]
impl Platform for Mastodon {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Mastodon
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotency_window: Some(IDEMPOTENCY_WINDOW),
            refresh: false,
            followers: true,
            requires_image: false,
            checkpoint_settles_outcome: false,
        }
    }

    /// The instance's token never expires and comes without a refresh token; the connection
    /// keeps the instance its client calls.
    async fn exchange(
        &self,
        _app: &OAuthApp,
        token: &CodeToken,
        instance: Option<&str>,
    ) -> Result<Vec<Granted>, PlatformError> {
        let mut extras = serde_json::Map::new();
        extras.insert("instance_url".into(), instance.unwrap_or_default().into());
        Ok(vec![Granted {
            account: Account {
                platform_account_id: String::new(),
                handle: String::new(),
                extras,
            },
            creds: Credentials {
                access_token: Some(token.access()),
                ..Credentials::default()
            },
        }])
    }

    /// Mastodon's defaults (an instance may set its own): 4 attachments, a 1,500-character
    /// description, 16 MiB and 33,177,600 pixels (7680×4320) per image.
    fn media_rules(&self) -> MediaRules {
        MediaRules {
            max_images: 4,
            max_alt: Some((1500, Count::Chars)),
            types: &ImageType::ALL,
            max_bytes: 16 * 1024 * 1024,
            max_pixels: Some(33_177_600),
        }
    }

    fn validate(&self, account: &Account, post: &PostRequest) -> Result<(), Invalid> {
        let limit = Self::max_characters(account);
        // Mastodon counts grapheme clusters (a family emoji is one), as Bluesky does.
        let lead = Self::compose(post).graphemes(true).count() - post.url.graphemes(true).count();
        let weighted = lead + URL_WEIGHT;
        if weighted > limit {
            return Err(Invalid {
                field: "text",
                code: "text_too_long",
                message: format!(
                    "Mastodon allows {limit} characters (a URL counts as {URL_WEIGHT}); this share has {weighted}"
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
        let url = format!(
            "{}/api/v1/accounts/verify_credentials",
            Self::base(account)?
        );
        let req = self.http.get(url).header("authorization", bearer(creds)?);
        let res = http::send(self.kind(), "verify", false, req).await?;
        if !res.status().is_success() {
            return Err(classify(res).await);
        }
        let a: MastodonAccount = res.json().await.map_err(|e| PlatformError::Transient {
            status: None,
            reason: format!("unreadable account: {e}"),
        })?;
        Ok(Profile {
            platform_account_id: a.id,
            handle: a.acct,
            display_name: crate::types::display_name(a.display_name),
            followers_count: a.followers_count,
        })
    }

    async fn share(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Published, PlatformError> {
        let base = Self::base(account)?;
        let media_ids = self.upload_media(base, creds, post).await?;
        let url = format!("{base}/api/v1/statuses");
        let mut body = serde_json::json!({ "status": Self::compose(post), "visibility": "public" });
        if !media_ids.is_empty() {
            body["media_ids"] = media_ids.into();
        }
        let req = self
            .http
            .post(url)
            .header("authorization", bearer(creds)?)
            .header("idempotency-key", &post.idempotency_key)
            .json(&body);
        let res = http::send(self.kind(), "share", true, req).await?;
        if !res.status().is_success() {
            return Err(classify(res).await);
        }
        // The status exists now; an unreadable body is not a reason to post again.
        let s: Status = res
            .json()
            .await
            .map_err(|e| PlatformError::OutcomeUnknown {
                reason: format!("unreadable status: {e}"),
            })?;
        Ok(Published {
            post_id: s.id,
            post_url: s.url,
            app_budget: None,
        })
    }

    async fn followers_page(
        &self,
        account: &Account,
        creds: &Credentials,
        relation: Relation,
        cursor: Option<&str>,
    ) -> Result<FollowerPage, PlatformError> {
        let base = Self::base(account)?;
        let path = match relation {
            Relation::Followers => "followers",
            Relation::Follows => "following",
        };
        let first = format!(
            "{base}/api/v1/accounts/{}/{path}?limit=80",
            account.platform_account_id
        );
        // The cursor is the `next` link the instance gave; only follow it on the same instance.
        let url = match cursor {
            Some(c) if c.starts_with(&format!("{base}/")) => c.to_owned(),
            Some(_) => {
                return Err(PlatformError::Rejected {
                    status: 0,
                    reason: "cursor points off the instance".into(),
                });
            }
            None => first,
        };
        let req = self.http.get(url).header("authorization", bearer(creds)?);
        let res = http::send(self.kind(), "followers", false, req).await?;
        if !res.status().is_success() {
            return Err(classify(res).await);
        }
        let next_cursor = res
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let accounts: Vec<MastodonAccount> =
            res.json().await.map_err(|e| PlatformError::Transient {
                status: None,
                reason: format!("unreadable accounts: {e}"),
            })?;
        Ok(FollowerPage {
            accounts: accounts
                .into_iter()
                .map(|a| FollowerAccount {
                    platform_account_id: a.id,
                    handle: a.acct,
                })
                .collect(),
            next_cursor,
        })
    }
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        is_next.then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(text: &str) -> PostRequest {
        PostRequest {
            share_id: "shr_1".into(),
            url: "https://example.com/a/very/long/path/that/is/far/longer/than/twenty/three/characters".into(),
            title: Some("Title".into()),
            text: Some(text.into()),
            image_url: None,
            media: Vec::new(),
            idempotency_key: "k".into(),
            checkpoint: Default::default(),
        }
    }

    fn account(max: Option<u64>) -> Account {
        let mut extras = serde_json::Map::new();
        extras.insert("instance_url".into(), "https://m.example".into());
        if let Some(m) = max {
            extras.insert("max_characters".into(), m.into());
        }
        Account {
            platform_account_id: "1".into(),
            handle: "a".into(),
            extras,
        }
    }

    #[test]
    fn a_url_counts_as_twenty_three_characters() {
        let m = Mastodon::new(Client::new());
        assert!(m.validate(&account(None), &post(&"x".repeat(475))).is_ok());
        let err = m
            .validate(&account(None), &post(&"x".repeat(476)))
            .unwrap_err();
        assert_eq!((err.field, err.code), ("text", "text_too_long"));
        assert!(
            m.validate(&account(Some(1000)), &post(&"x".repeat(900)))
                .is_ok()
        );
    }

    #[test]
    fn characters_are_grapheme_clusters_as_mastodon_counts_them() {
        let m = Mastodon::new(Client::new());
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\u{200D}\u{1F466}";
        // 100 families and a URL: 100 + 2 + 23 = 125 characters, not 7 code points each.
        assert!(
            m.validate(&account(None), &post(&family.repeat(100)))
                .is_ok()
        );
        assert!(
            m.validate(&account(None), &post(&family.repeat(475)))
                .is_ok()
        );
        let err = m
            .validate(&account(None), &post(&family.repeat(476)))
            .unwrap_err();
        assert_eq!((err.field, err.code), ("text", "text_too_long"));
        // A flag is two regional indicators and one character.
        assert!(
            m.validate(&account(None), &post(&"\u{1F1EB}\u{1F1F7}".repeat(475)))
                .is_ok()
        );
    }

    #[test]
    fn the_next_link_is_found_among_others() {
        let h = r#"<https://m.example/api/v1/accounts/1/followers?max_id=7>; rel="next", <https://m.example/api/v1/accounts/1/followers?min_id=9>; rel="prev""#;
        assert_eq!(
            next_link(h).as_deref(),
            Some("https://m.example/api/v1/accounts/1/followers?max_id=7")
        );
        assert_eq!(next_link(r#"<https://x>; rel="prev""#), None);
    }

    #[test]
    fn rate_limit_reset_is_read_as_iso_or_epoch_and_corrected_by_date() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-reset",
            "2026-01-01T00:05:00.000000Z".parse().unwrap(),
        );
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(300)));
        h.insert("date", "Thu, 01 Jan 2026 00:04:00 GMT".parse().unwrap());
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(60)));
        let mut e = HeaderMap::new();
        e.insert(
            "x-ratelimit-reset",
            (now.timestamp() + 30).to_string().parse().unwrap(),
        );
        assert_eq!(rate_limit_wait(&e, now), Some(Duration::from_secs(30)));
        e.insert("retry-after", "7".parse().unwrap());
        assert_eq!(rate_limit_wait(&e, now), Some(Duration::from_secs(7)));
    }
}
