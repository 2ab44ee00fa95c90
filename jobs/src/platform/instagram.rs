//! Instagram (Graph API content publishing, Instagram Login on `graph.instagram.com`): an image is
//! required, so a link share is an image with the text and URL as its caption. Publishing is two
//! steps: `POST /{ig-user-id}/media` creates a container, which is polled until `FINISHED`, then
//! `POST /{ig-user-id}/media_publish` publishes it. Only the second step has an effect, so only it
//! is treated as a create whose lost answer leaves the outcome unknown.
//!
//! The container wait and the publishing-quota check here are shared with Threads.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Client;
use serde::Deserialize;

use super::{
    Account, Capabilities, Credentials, Invalid, Platform, PlatformError, PlatformKind,
    PostRequest, Profile, Published, TokenSet,
    facebook::{as_grant_error, checked_id, graph_call, parse_graph_time, token, token_answer},
    http,
    x::{lead, post_matches},
};

pub const DEFAULT_BASE: &str = "https://graph.instagram.com";
pub const API_VERSION: &str = "v24.0";

/// Meta's media reference caps a caption at 2,200 characters and 30 hashtags.
const MAX_CAPTION_CHARS: usize = 2_200;
const MAX_HASHTAGS: usize = 30;
const READ_BACK_WINDOW: chrono::Duration = chrono::Duration::hours(72);
/// The quota window rolls over 24 hours and Meta does not say when a slot frees up: wait a while
/// rather than a whole day.
const QUOTA_WAIT: Duration = Duration::from_secs(3600);

/// How long a share waits for a container to become publishable. The default (10 checks a second
/// apart) stays well inside the share timeout; a container still `IN_PROGRESS` after that is a
/// transient failure, and the retry creates a fresh container (an unpublished one just expires).
#[derive(Debug, Clone, Copy)]
pub struct ContainerWait {
    pub checks: u32,
    pub interval: Duration,
}

impl Default for ContainerWait {
    fn default() -> Self {
        Self {
            checks: 10,
            interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Instagram {
    http: Client,
    base: String,
    wait: ContainerWait,
}

impl Instagram {
    pub fn new(http: Client, base_url: impl Into<String>) -> Self {
        Self {
            http,
            base: base_url.into().trim_end_matches('/').to_owned(),
            wait: ContainerWait::default(),
        }
    }

    pub fn with_container_wait(mut self, wait: ContainerWait) -> Self {
        self.wait = wait;
        self
    }

    fn user_id(account: &Account) -> Result<&str, PlatformError> {
        checked_id(
            account
                .extra_str("ig_user_id")
                .unwrap_or(&account.platform_account_id),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{API_VERSION}/{path}", self.base)
    }

    /// The caption: the text (or else the title), a blank line, the URL. Instagram does not make
    /// caption URLs clickable, but the URL is still what read-back matches on.
    pub fn caption(post: &PostRequest) -> String {
        match lead(post) {
            Some(lead) => format!("{lead}\n\n{}", post.url),
            None => post.url.clone(),
        }
    }
}

#[derive(Deserialize)]
struct ContainerStatus {
    status_code: Option<String>,
    status: Option<String>,
    error_message: Option<String>,
}

/// Polls a container (`GET /{container}?fields=…`) until it is `FINISHED`: at most `wait.checks`
/// times, the first at once (images and text are usually ready immediately). `ERROR` is a refusal
/// of the content; `EXPIRED`, an unknown state, or `IN_PROGRESS` past the bound are transient.
/// Instagram reports the state in `status_code`, Threads in `status`.
pub async fn wait_for_container(
    kind: PlatformKind,
    http_client: &Client,
    url: &str,
    fields: &str,
    access_token: &str,
    wait: ContainerWait,
) -> Result<(), PlatformError> {
    for check in 0..wait.checks {
        if check > 0 {
            tokio::time::sleep(wait.interval).await;
        }
        let req = http_client
            .get(url)
            .query(&[("fields", fields), ("access_token", access_token)]);
        let c: ContainerStatus = graph_call(kind, "container_status", false, req).await?;
        let state = c
            .status_code
            .clone()
            .or_else(|| c.status.clone())
            .unwrap_or_default();
        let detail = || {
            c.error_message
                .clone()
                .or_else(|| c.status.clone())
                .unwrap_or_else(|| state.clone())
        };
        match state.as_str() {
            "FINISHED" => return Ok(()),
            "IN_PROGRESS" | "" => {}
            "ERROR" => {
                return Err(PlatformError::Rejected {
                    status: 0,
                    reason: format!("the media container failed: {}", detail()),
                });
            }
            other => {
                return Err(PlatformError::Transient {
                    status: None,
                    reason: format!("the media container is {other}; a new one will be created"),
                });
            }
        }
    }
    Err(PlatformError::Transient {
        status: None,
        reason: format!(
            "the media container was still in progress after {} checks",
            wait.checks
        ),
    })
}

#[derive(Deserialize)]
struct QuotaAnswer {
    #[serde(default)]
    data: Vec<Quota>,
}

#[derive(Deserialize)]
struct Quota {
    quota_usage: Option<u64>,
    config: Option<QuotaConfig>,
}

#[derive(Deserialize)]
struct QuotaConfig {
    quota_total: Option<u64>,
}

/// Reads a publishing quota (`content_publishing_limit` on Instagram, `threads_publishing_limit`
/// on Threads; `{"data":[{"quota_usage","config":{"quota_total","quota_duration"}}]}`) and answers
/// `RateLimited` when it is spent. Meta's documents disagree on the Instagram total (25, 50, 100),
/// so it is read rather than assumed. The check is advisory: if the read itself fails for any reason
/// other than dead credentials or throttling, the share goes ahead and the publish call decides.
pub async fn check_quota(
    kind: PlatformKind,
    http_client: &Client,
    url: &str,
    access_token: &str,
) -> Result<(), PlatformError> {
    let req = http_client.get(url).query(&[
        ("fields", "quota_usage,config"),
        ("access_token", access_token),
    ]);
    match graph_call::<QuotaAnswer>(kind, "publishing_limit", false, req).await {
        Ok(a) => {
            let spent = a.data.iter().any(|q| {
                match (q.quota_usage, q.config.as_ref().and_then(|c| c.quota_total)) {
                    (Some(used), Some(total)) => used >= total,
                    _ => false,
                }
            });
            if spent {
                Err(PlatformError::RateLimited {
                    retry_after: Some(QUOTA_WAIT),
                })
            } else {
                Ok(())
            }
        }
        Err(e @ (PlatformError::Unauthorized { .. } | PlatformError::RateLimited { .. })) => Err(e),
        Err(_) => Ok(()),
    }
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct Permalink {
    permalink: Option<String>,
}

/// Waits for a created container, publishes it, and reads the post's permalink. Creating a
/// container posts nothing; the publish call is the create, so a lost answer to it is an unknown
/// outcome (settled by read-back). Instagram and Threads share this flow.
#[allow(clippy::too_many_arguments)]
pub async fn publish_container(
    kind: PlatformKind,
    http_client: &Client,
    url: &(dyn Fn(&str) -> String + Sync),
    container_id: &str,
    status_fields: &str,
    publish_path: &str,
    access_token: &str,
    wait: ContainerWait,
) -> Result<Published, PlatformError> {
    wait_for_container(
        kind,
        http_client,
        &url(container_id),
        status_fields,
        access_token,
        wait,
    )
    .await?;
    let form = [
        ("creation_id", container_id),
        ("access_token", access_token),
    ];
    let req = http_client.post(url(publish_path)).form(&form);
    let media: Created = graph_call(kind, "share", true, req).await?;
    let post_url = match checked_id(&media.id) {
        Ok(m) => permalink(kind, http_client, &url(m), access_token).await,
        Err(_) => None,
    };
    Ok(Published {
        post_id: media.id,
        post_url,
    })
}

/// The public URL of a just-published post. Best effort: the post exists whatever this answers.
pub async fn permalink(
    kind: PlatformKind,
    http_client: &Client,
    url: &str,
    access_token: &str,
) -> Option<String> {
    let req = http_client
        .get(url)
        .query(&[("fields", "permalink"), ("access_token", access_token)]);
    graph_call::<Permalink>(kind, "permalink", false, req)
        .await
        .ok()
        .and_then(|p| p.permalink)
}

#[derive(Deserialize)]
struct IgUser {
    id: String,
    username: Option<String>,
    followers_count: Option<u64>,
}

#[derive(Deserialize)]
struct MediaList {
    #[serde(default)]
    data: Vec<Media>,
}

#[derive(Deserialize)]
struct Media {
    id: String,
    caption: Option<String>,
    permalink: Option<String>,
    timestamp: Option<String>,
}

fn hashtags(text: &str) -> usize {
    text.split_whitespace()
        .filter(|w| {
            w.strip_prefix('#')
                .and_then(|t| t.chars().next())
                .is_some_and(char::is_alphanumeric)
        })
        .count()
}

#[async_trait]
impl Platform for Instagram {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Instagram
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotency_window: None,
            refresh: true,
            followers: false,
            requires_image: true,
        }
    }

    fn validate(&self, _account: &Account, post: &PostRequest) -> Result<(), Invalid> {
        if post
            .image_url
            .as_deref()
            .is_none_or(|u| u.trim().is_empty())
        {
            return Err(Invalid {
                field: "image_url",
                code: "image_required",
                message: "Instagram posts need an image: give the share an image_url".into(),
            });
        }
        let caption = Self::caption(post);
        let chars = caption.chars().count();
        if chars > MAX_CAPTION_CHARS {
            return Err(Invalid {
                field: "text",
                code: "text_too_long",
                message: format!(
                    "Instagram allows {MAX_CAPTION_CHARS} characters in a caption; this share has {chars}"
                ),
            });
        }
        let tags = hashtags(&caption);
        if tags > MAX_HASHTAGS {
            return Err(Invalid {
                field: "text",
                code: "too_many_hashtags",
                message: format!(
                    "Instagram allows {MAX_HASHTAGS} hashtags in a caption; this share has {tags}"
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
        let id = Self::user_id(account)?;
        let req = self.http.get(self.url(id)).query(&[
            ("fields", "id,username,followers_count"),
            ("access_token", token(creds)?),
        ]);
        let u: IgUser = graph_call(self.kind(), "verify", false, req).await?;
        Ok(Profile {
            handle: u.username.unwrap_or_else(|| u.id.clone()),
            platform_account_id: u.id,
            followers_count: u.followers_count,
        })
    }

    async fn share(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Published, PlatformError> {
        let id = Self::user_id(account)?;
        let token = token(creds)?;
        let image_url = post
            .image_url
            .as_deref()
            .ok_or_else(|| PlatformError::Rejected {
                status: 0,
                reason: "Instagram posts need an image".into(),
            })?;
        check_quota(
            self.kind(),
            &self.http,
            &self.url(&format!("{id}/content_publishing_limit")),
            token,
        )
        .await?;

        // Creating a container publishes nothing, so a lost answer here is only transient.
        let caption = Self::caption(post);
        let form = [
            ("image_url", image_url),
            ("caption", caption.as_str()),
            ("access_token", token),
        ];
        let req = self.http.post(self.url(&format!("{id}/media"))).form(&form);
        let container: Created = graph_call(self.kind(), "create_container", false, req).await?;
        let container_id = checked_id(&container.id)?;

        publish_container(
            self.kind(),
            &self.http,
            &|path: &str| self.url(path),
            container_id,
            "status_code,status",
            &format!("{id}/media_publish"),
            token,
            self.wait,
        )
        .await
    }

    /// Reads the account's latest media and matches the share's URL and words in the caption,
    /// among posts newer than [`READ_BACK_WINDOW`].
    async fn find_published(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Option<Published>, PlatformError> {
        let id = Self::user_id(account)?;
        let since = chrono::Utc::now() - READ_BACK_WINDOW;
        let query = [
            ("fields", "id,caption,permalink,timestamp"),
            ("limit", "25"),
            ("access_token", token(creds)?),
        ];
        let req = self
            .http
            .get(self.url(&format!("{id}/media")))
            .query(&query);
        let list: MediaList = graph_call(self.kind(), "find_published", false, req).await?;
        let found = list.data.into_iter().find(|m| {
            let recent = m
                .timestamp
                .as_deref()
                .and_then(parse_graph_time)
                .is_some_and(|t| t >= since);
            recent && post_matches(post, lead(post), m.caption.as_deref().unwrap_or(""), &[])
        });
        Ok(found.map(|m| Published {
            post_id: m.id,
            post_url: m.permalink,
        }))
    }

    /// `ig_refresh_token`: the long-lived access token (at least 24 hours old and unexpired) is
    /// exchanged for a fresh 60-day one. There is no separate refresh token.
    async fn refresh(
        &self,
        _account: &Account,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        let token = token(creds).map_err(as_grant_error)?;
        let req = self
            .http
            .get(format!("{}/refresh_access_token", self.base))
            .query(&[("grant_type", "ig_refresh_token"), ("access_token", token)]);
        let res = http::send(self.kind(), "refresh", false, req).await?;
        token_answer(res).await
    }

    // `followers_page` stays unsupported: the API offers only `followers_count` on the IG user,
    // no list of followers.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(text: &str, image: Option<&str>) -> PostRequest {
        PostRequest {
            share_id: "shr_1".into(),
            url: "https://example.com/p".into(),
            title: None,
            text: Some(text.into()),
            image_url: image.map(Into::into),
            idempotency_key: "k".into(),
        }
    }

    #[test]
    fn an_image_is_required_and_the_caption_is_bounded() {
        let ig = Instagram::new(Client::new(), DEFAULT_BASE);
        let account = Account {
            platform_account_id: "1784".into(),
            handle: "a".into(),
            extras: Default::default(),
        };
        let err = ig.validate(&account, &post("hi", None)).unwrap_err();
        assert_eq!((err.field, err.code), ("image_url", "image_required"));
        assert!(ig.validate(&account, &post("hi", Some(" "))).is_err());
        let image = Some("https://example.com/i.jpg");
        // 2,177 + "\n\n" + a 21-character URL = 2,200.
        assert!(
            ig.validate(&account, &post(&"é".repeat(2_177), image))
                .is_ok()
        );
        assert_eq!(
            ig.validate(&account, &post(&"é".repeat(2_178), image))
                .unwrap_err()
                .code,
            "text_too_long"
        );
        let tags = (0..31)
            .map(|i| format!("#t{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            ig.validate(&account, &post(&tags, image)).unwrap_err().code,
            "too_many_hashtags"
        );
        assert_eq!(hashtags("# not #1 #ok https://x.test/#frag"), 2);
    }
}
