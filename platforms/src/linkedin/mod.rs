//! LinkedIn: the versioned Posts API (`POST /rest/posts`) with an article card Herald fills in
//! itself (LinkedIn does not scrape shared URLs), `GET /v2/userinfo` for identity, and the
//! refresh grant, which LinkedIn issues only to approved partners. A share's images are
//! uploaded first ([`media`]) and replace the article card.

mod media;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use crate::{
    config::PlatformApp,
    error::{LimitScope, PlatformError},
    http,
    kind::PlatformKind,
    media::{Count, ImageType, MediaRules},
    oauth::{ClientAuth, OAuthApp, OAuthClient, bearer, refresh_grant},
    platform::{Capabilities, Platform},
    text::post_matches,
    types::{Account, Credentials, Invalid, PostRequest, Profile, Published, TokenSet},
};

pub const DEFAULT_BASE: &str = "https://api.linkedin.com";
pub const DEFAULT_TOKEN_URL: &str = "https://www.linkedin.com/oauth/v2/accessToken";
/// The `LinkedIn-Version` (YYYYMM) the request shapes here were written against. LinkedIn sunsets
/// versions about a year after release, so deployments can move it with [`Linkedin::with_version`].
pub const DEFAULT_VERSION: &str = "202601";
const AUTHORIZE_URL: &str = "https://www.linkedin.com/oauth/v2/authorization";
const SCOPES: &str = "openid profile w_member_social";

/// Postiz's `maxLength`; LinkedIn's own pages only say "3,000 characters" in partner guides.
const MAX_COMMENTARY_CHARS: usize = 3_000;
const READ_BACK_WINDOW: chrono::Duration = chrono::Duration::hours(72);
/// Characters the "little" text format reserves. Unescaped, they silently truncate the post.
const LITTLE_RESERVED: &[char] = &[
    '\\', '|', '{', '}', '@', '[', ']', '(', ')', '<', '>', '#', '*', '_', '~',
];

/// Herald's LinkedIn app as configured (`HERALD_LINKEDIN_*`). LinkedIn takes PKCE from native
/// apps only, so the app secret authenticates; it documents no revocation endpoint (an operator
/// may configure one).
pub fn oauth_app(app: &PlatformApp) -> OAuthApp {
    app.secret_flow(DEFAULT_TOKEN_URL, AUTHORIZE_URL, SCOPES)
}

#[derive(Debug, Clone)]
pub struct Linkedin {
    http: Client,
    base: String,
    oauth: OAuthClient,
    version: String,
    /// The app connect flows use; `None` for a client built without one (its tests).
    app: Option<OAuthApp>,
}

impl Linkedin {
    /// LinkedIn with Herald's app as configured.
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

    pub fn new(http: Client, base_url: impl Into<String>, oauth: OAuthClient) -> Self {
        Self {
            http,
            base: base_url.into().trim_end_matches('/').to_owned(),
            oauth,
            version: DEFAULT_VERSION.to_owned(),
            app: None,
        }
    }

    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The post's author: `extras.author_urn` (a page the member administers), else
    /// `extras.organization_id`, else the member (`urn:li:person:<sub>`).
    pub fn author(account: &Account) -> Result<String, PlatformError> {
        let bad = || PlatformError::Rejected {
            status: 0,
            reason: "the connection has no usable LinkedIn author".into(),
        };
        let id_ok = |id: &str| {
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if let Some(urn) = account.extra_str("author_urn").or_else(|| {
            Some(account.platform_account_id.as_str()).filter(|a| a.starts_with("urn:"))
        }) {
            let id = urn
                .strip_prefix("urn:li:person:")
                .or_else(|| urn.strip_prefix("urn:li:organization:"))
                .ok_or_else(bad)?;
            return if id_ok(id) {
                Ok(urn.to_owned())
            } else {
                Err(bad())
            };
        }
        if let Some(org) = account.extra_str("organization_id") {
            return if id_ok(org) {
                Ok(format!("urn:li:organization:{org}"))
            } else {
                Err(bad())
            };
        }
        let person = &account.platform_account_id;
        if id_ok(person) {
            Ok(format!("urn:li:person:{person}"))
        } else {
            Err(bad())
        }
    }

    fn rest(
        &self,
        req: RequestBuilder,
        creds: &Credentials,
    ) -> Result<RequestBuilder, PlatformError> {
        Ok(req
            .header("authorization", bearer(creds)?)
            .header("linkedin-version", &self.version)
            .header("x-restli-protocol-version", "2.0.0"))
    }
}

/// Escapes the "little" text format's reserved characters with a backslash.
pub fn escape_little(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if LITTLE_RESERVED.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unescape_little(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(next)) if LITTLE_RESERVED.contains(next) => {
                out.push(chars.next().unwrap_or('\\'))
            }
            _ => out.push(c),
        }
    }
    out
}

/// LinkedIn's limits are daily and reset at midnight UTC, and its 429s carry no reset header.
pub fn until_midnight_utc(now: DateTime<Utc>) -> Duration {
    let next = (now.date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc());
    next.and_then(|t| (t - now).to_std().ok())
        .unwrap_or(Duration::from_secs(3600))
}

/// `{"status","serviceErrorCode","code","message"}`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(rename = "serviceErrorCode")]
    service_error_code: Option<i64>,
    code: Option<String>,
    message: Option<String>,
}

/// Classifies a non-2xx API answer. A 401 is an expired token worth a refresh only when a refresh
/// token exists and the token was not revoked (`REVOKED_ACCESS_TOKEN`, 65601).
async fn classify(res: Response, has_refresh: bool) -> PlatformError {
    let status = res.status();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body: ErrorBody = res.json().await.unwrap_or_default();
    let revoked = body.service_error_code == Some(65_601)
        || body.code.as_deref() == Some("REVOKED_ACCESS_TOKEN");
    let reason = match (body.message, body.service_error_code) {
        (Some(m), Some(c)) => format!("{m} ({c})"),
        (Some(m), None) => m,
        (None, _) => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    match status {
        StatusCode::UNAUTHORIZED if has_refresh && !revoked => PlatformError::TokenExpired,
        // A missing permission or page role is fixed only by authorizing again (or by the page admin).
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PlatformError::Unauthorized { reason },
        // LinkedIn has an application and a member daily limit, and its 429 does not say which
        // was reached (no headers, no code): taken as the member's, so one account's burst cannot
        // stop every tenant.
        StatusCode::TOO_MANY_REQUESTS => PlatformError::RateLimited {
            retry_after: retry_after.or_else(|| Some(until_midnight_utc(Utc::now()))),
            scope: LimitScope::Account,
        },
        s if s.is_server_error() => PlatformError::Transient {
            status: Some(s.as_u16()),
            reason,
        },
        // 400/422 validation, including "Content is a duplicate of urn:li:share:…".
        s => PlatformError::Rejected {
            status: s.as_u16(),
            reason,
        },
    }
}

#[derive(Deserialize)]
struct UserInfo {
    sub: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct PostList {
    #[serde(default)]
    elements: Vec<PostElement>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PostElement {
    id: String,
    commentary: Option<String>,
    content: Option<PostContent>,
    created_at: Option<i64>,
    published_at: Option<i64>,
}

#[derive(Deserialize)]
struct PostContent {
    article: Option<Article>,
}

#[derive(Deserialize)]
struct Article {
    source: Option<String>,
}

fn feed_url(urn: &str) -> String {
    format!("https://www.linkedin.com/feed/update/{urn}/")
}

/// The share's own words as LinkedIn gets them: the commentary carries the text; the title goes
/// on the card.
fn commentary(post: &PostRequest) -> Option<&str> {
    post.text
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[async_trait]
impl Platform for Linkedin {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Linkedin
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotency_window: None,
            refresh: true,
            followers: false,
            requires_image: false,
            checkpoint_settles_outcome: false,
        }
    }

    /// JPEG, GIF and PNG up to 36,152,320 pixels (LinkedIn states no byte limit: Herald's
    /// fetch cap applies); one image, or 2 to 20 as a multi-image post; alt text up to 4,086
    /// characters.
    fn media_rules(&self) -> MediaRules {
        MediaRules {
            max_images: 20,
            max_alt: Some((4086, Count::Chars)),
            types: &[ImageType::Jpeg, ImageType::Gif, ImageType::Png],
            max_bytes: 16 * 1024 * 1024,
            max_pixels: Some(36_152_320),
        }
    }

    fn validate(&self, account: &Account, post: &PostRequest) -> Result<(), Invalid> {
        if Self::author(account).is_err() {
            return Err(Invalid {
                field: "connection_id",
                code: "author_missing",
                message: "the LinkedIn connection has no member or organization to post as".into(),
            });
        }
        let chars = commentary(post).map_or(0, |c| c.chars().count());
        if chars > MAX_COMMENTARY_CHARS {
            return Err(Invalid {
                field: "text",
                code: "text_too_long",
                message: format!(
                    "LinkedIn allows {MAX_COMMENTARY_CHARS} characters in a post; this share has {chars}"
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
        // The OpenID userinfo endpoint is unversioned: no LinkedIn-Version header.
        let req = self
            .http
            .get(format!("{}/v2/userinfo", self.base))
            .header("authorization", bearer(creds)?);
        let res = http::send(self.kind(), "verify", false, req).await?;
        if !res.status().is_success() {
            return Err(classify(res, creds.refresh_token.is_some()).await);
        }
        let u: UserInfo = res.json().await.map_err(|e| PlatformError::Transient {
            status: None,
            reason: format!("unreadable userinfo: {e}"),
        })?;
        let display_name = crate::types::display_name(u.name);
        Ok(Profile {
            handle: display_name.clone().unwrap_or_else(|| u.sub.clone()),
            display_name,
            platform_account_id: u.sub,
            followers_count: None,
        })
    }

    /// The card is Herald's to fill: `source` and `title` (the share's title, else its URL). There
    /// is no description or thumbnail: Herald holds no page summary, and a thumbnail must first be
    /// uploaded through the Images API.
    async fn share(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Published, PlatformError> {
        let author = Self::author(account)?;
        let title = post
            .title
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .unwrap_or(&post.url);
        // With images the post's one content is them, and the link goes into the commentary.
        let (content, text) = match self.image_content(&author, creds, post).await? {
            Some(images) => (
                images,
                Some(match commentary(post) {
                    Some(words) => format!("{words}\n\n{}", post.url),
                    None => post.url.clone(),
                }),
            ),
            None => (
                serde_json::json!({ "article": { "source": post.url, "title": title } }),
                commentary(post).map(str::to_owned),
            ),
        };
        let body = serde_json::json!({
            "author": author,
            "commentary": text.as_deref().map(escape_little).unwrap_or_default(),
            "visibility": "PUBLIC",
            "distribution": { "feedDistribution": "MAIN_FEED", "targetEntities": [], "thirdPartyDistributionChannels": [] },
            "content": content,
            "lifecycleState": "PUBLISHED",
            "isReshareDisabledByAuthor": false,
        });
        let req = self
            .rest(self.http.post(format!("{}/rest/posts", self.base)), creds)?
            .json(&body);
        let res = http::send(self.kind(), "share", true, req).await?;
        if !res.status().is_success() {
            return Err(classify(res, creds.refresh_token.is_some()).await);
        }
        let urn = res
            .headers()
            .get("x-restli-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match urn {
            Some(urn) if !urn.is_empty() => Ok(Published {
                post_url: Some(feed_url(&urn)),
                post_id: urn,
                app_budget: None,
            }),
            // Created, but without its id Herald cannot point at it; posting again would duplicate it.
            _ => Err(PlatformError::OutcomeUnknown {
                reason: "LinkedIn accepted the post but returned no x-restli-id".into(),
            }),
        }
    }

    /// Possible for organization authors only: `GET /rest/posts?q=author` needs
    /// `r_organization_social` for a page, while a member's own posts need `r_member_social`, which
    /// LinkedIn grants only to approved partners. Matches the article `source` and the commentary
    /// among posts newer than [`READ_BACK_WINDOW`].
    async fn find_published(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Option<Published>, PlatformError> {
        let author = Self::author(account)?;
        if !author.starts_with("urn:li:organization:") {
            return Err(PlatformError::Unsupported("read-back of a member's posts"));
        }
        let query = [
            ("q", "author"),
            ("author", author.as_str()),
            ("count", "20"),
            ("sortBy", "LAST_MODIFIED"),
        ];
        let req = self
            .rest(self.http.get(format!("{}/rest/posts", self.base)), creds)?
            .query(&query);
        let res = http::send(self.kind(), "find_published", false, req).await?;
        if !res.status().is_success() {
            return Err(classify(res, creds.refresh_token.is_some()).await);
        }
        let list: PostList = res.json().await.map_err(|e| PlatformError::Transient {
            status: None,
            reason: format!("unreadable posts: {e}"),
        })?;
        let since = (Utc::now() - READ_BACK_WINDOW).timestamp_millis();
        let found = list.elements.into_iter().find(|p| {
            let recent = p.published_at.or(p.created_at).is_some_and(|t| t >= since);
            let source: Vec<&str> = p
                .content
                .as_ref()
                .and_then(|c| c.article.as_ref())
                .and_then(|a| a.source.as_deref())
                .into_iter()
                .collect();
            let text = unescape_little(p.commentary.as_deref().unwrap_or(""));
            recent && post_matches(post, commentary(post), &text, &source)
        });
        Ok(found.map(|p| Published {
            post_url: Some(feed_url(&p.id)),
            post_id: p.id,
            app_budget: None,
        }))
    }

    /// Only approved partners receive refresh tokens; everyone else reauthorizes before day 60.
    async fn refresh(
        &self,
        _account: &Account,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        let Some(rt) = &creds.refresh_token else {
            return Err(PlatformError::Unsupported(
                "refresh without a refresh token",
            ));
        };
        // LinkedIn's 429s carry no reset header: the grant is retried on the default wait.
        let rate_limited = |_: &reqwest::header::HeaderMap| PlatformError::RateLimited {
            retry_after: None,
            scope: LimitScope::Account,
        };
        refresh_grant(
            self.kind(),
            &self.http,
            &self.oauth,
            rt,
            ClientAuth::InBody,
            rate_limited,
        )
        .await
    }

    fn oauth_app(&self) -> Option<&OAuthApp> {
        self.app.as_ref()
    }

    // `followers_page` stays unsupported: LinkedIn has no API listing individual followers, only
    // organization follower statistics and (for partners) a member's connection count.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str, extras: serde_json::Value) -> Account {
        Account {
            platform_account_id: id.into(),
            handle: "h".into(),
            extras: extras.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn the_author_is_a_page_or_the_member() {
        let a = |id, extras| Linkedin::author(&account(id, extras));
        assert_eq!(
            a("Dk968RHxiO", serde_json::json!({})).unwrap(),
            "urn:li:person:Dk968RHxiO"
        );
        assert_eq!(
            a("Dk968RHxiO", serde_json::json!({"organization_id": "123"})).unwrap(),
            "urn:li:organization:123"
        );
        assert_eq!(
            a(
                "x",
                serde_json::json!({"author_urn": "urn:li:organization:9"})
            )
            .unwrap(),
            "urn:li:organization:9"
        );
        assert_eq!(
            a("urn:li:person:abc", serde_json::json!({})).unwrap(),
            "urn:li:person:abc"
        );
        assert!(a("urn:li:share:1", serde_json::json!({})).is_err());
        assert!(a("a/b", serde_json::json!({})).is_err());
    }

    #[test]
    fn little_text_reserved_characters_are_escaped_and_read_back() {
        let raw = r"Hi @you (see #rust) [x] {y} <z> a_b*c~d|e\f";
        let escaped = escape_little(raw);
        assert_eq!(
            escaped,
            r"Hi \@you \(see \#rust\) \[x\] \{y\} \<z\> a\_b\*c\~d\|e\\f"
        );
        assert_eq!(unescape_little(&escaped), raw);
    }

    #[test]
    fn a_rate_limit_lasts_until_midnight_utc() {
        let now = DateTime::parse_from_rfc3339("2026-05-01T22:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(until_midnight_utc(now), Duration::from_secs(90 * 60));
    }
}
