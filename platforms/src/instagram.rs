//! Instagram (Graph API content publishing, Instagram Login on `graph.instagram.com`): an image is
//! required, so a link share is an image with the text and URL as its caption. Publishing is two
//! steps: `POST /{ig-user-id}/media` creates a container, which is polled until `FINISHED`, then
//! `POST /{ig-user-id}/media_publish` publishes it. Only the second step has an effect, so only it
//! is treated as a create whose lost answer leaves the outcome unknown. The container flow and the
//! publishing-quota check are shared with Threads in [`super::meta`].

use async_trait::async_trait;
use reqwest::Client;
use serde::Deserialize;

use crate::{
    config::PlatformApp,
    error::PlatformError,
    kind::PlatformKind,
    media::{Count, ImageType, MediaRules},
    meta::{
        container::{self, ContainerFlow, ContainerWait, Created, ImageContainers},
        graph::{Graph, ListedPost, Since, caption, checked_id, token},
    },
    oauth::{CodeToken, Granted, OAuthApp},
    platform::{Capabilities, Platform},
    types::{Account, Credentials, Invalid, PostRequest, Profile, Published, TokenSet},
};

pub const DEFAULT_BASE: &str = "https://graph.instagram.com";
pub const API_VERSION: &str = "v24.0";
pub const DEFAULT_TOKEN_URL: &str = "https://api.instagram.com/oauth/access_token";
const AUTHORIZE_URL: &str = "https://www.instagram.com/oauth/authorize";
const SCOPES: &str = "instagram_business_basic,instagram_business_content_publish";

/// Meta's media reference caps a caption at 2,200 characters and 30 hashtags.
const MAX_CAPTION_CHARS: usize = 2_200;
const MAX_HASHTAGS: usize = 30;
const READ_BACK_WINDOW: chrono::Duration = chrono::Duration::hours(72);

/// Herald's Instagram app as configured (`HERALD_INSTAGRAM_*`): Meta takes the app secret rather than
/// PKCE, and documents no revocation endpoint (an operator may configure one).
pub fn oauth_app(app: &PlatformApp) -> OAuthApp {
    app.secret_flow(DEFAULT_TOKEN_URL, AUTHORIZE_URL, SCOPES)
}

#[derive(Debug, Clone)]
pub struct Instagram {
    graph: Graph,
    wait: ContainerWait,
    /// The app connect flows use; `None` for a client built without one (its tests).
    app: Option<OAuthApp>,
}

impl Instagram {
    pub fn new(http: Client, base_url: impl Into<String>) -> Self {
        Self {
            graph: Graph::new(PlatformKind::Instagram, http, base_url, API_VERSION),
            wait: ContainerWait::default(),
            app: None,
        }
    }

    /// Instagram with Herald's app as configured.
    pub fn from_config(http: Client, app: &PlatformApp) -> Self {
        Self {
            app: Some(oauth_app(app)),
            ..Self::new(http, app.api_base_or(DEFAULT_BASE))
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
}

#[derive(Deserialize)]
struct IgUser {
    id: String,
    username: Option<String>,
    name: Option<String>,
    followers_count: Option<u64>,
}

#[derive(Deserialize)]
struct Media {
    id: String,
    caption: Option<String>,
    permalink: Option<String>,
    timestamp: Option<String>,
}

impl ListedPost for Media {
    fn timestamp(&self) -> Option<&str> {
        self.timestamp.as_deref()
    }

    fn text(&self) -> Option<&str> {
        self.caption.as_deref()
    }

    fn links(&self) -> Vec<&str> {
        Vec::new()
    }

    fn published(self) -> Published {
        Published {
            post_id: self.id,
            post_url: self.permalink,
            app_budget: None,
        }
    }
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
            checkpoint_settles_outcome: true,
        }
    }

    fn oauth_app(&self) -> Option<&OAuthApp> {
        self.app.as_ref()
    }

    /// The code's short-lived token becomes a 60-day one (`ig_exchange_token`).
    async fn exchange(
        &self,
        app: &OAuthApp,
        token: &CodeToken,
        _instance: Option<&str>,
    ) -> Result<Vec<Granted>, PlatformError> {
        self.graph
            .exchange_code_token("ig_exchange_token", app, token)
            .await
    }

    /// JPEG only, at most 8 MiB each; several images are a carousel of up to 10; alt text
    /// (`alt_text`, since March 2025) has no documented limit, and Herald holds it to the
    /// 1,000 characters Threads documents.
    fn media_rules(&self) -> MediaRules {
        MediaRules {
            max_images: 10,
            max_alt: Some((1000, Count::Chars)),
            types: &[ImageType::Jpeg],
            max_bytes: 8 * 1024 * 1024,
            max_pixels: None,
        }
    }

    fn validate(&self, _account: &Account, post: &PostRequest) -> Result<(), Invalid> {
        if post.media.is_empty()
            && post
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
        let caption = caption(post);
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
        let u: IgUser = self
            .graph
            .fields(
                "verify",
                id,
                "id,username,name,followers_count",
                token(creds)?,
            )
            .await?;
        Ok(Profile {
            handle: u.username.unwrap_or_else(|| u.id.clone()),
            display_name: crate::types::display_name(u.name),
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
        let flow = ContainerFlow {
            publish_edge: &format!("{id}/media_publish"),
            status_fields: "status_code,status",
            wait: self.wait,
        };
        let create = async {
            container::check_quota(
                &self.graph,
                &format!("{id}/content_publishing_limit"),
                token,
            )
            .await?;
            // Creating a container publishes nothing, so a lost answer here is only transient.
            let caption = caption(post);
            if !post.media.is_empty() {
                // The images Herald captured at enqueue, by signed URL: Meta fetches them
                // itself, and the source URLs may have changed or gone since.
                let c = ImageContainers {
                    edge: &format!("{id}/media"),
                    text_field: "caption",
                    names_image_type: false,
                };
                return container::create_image_container(
                    &self.graph,
                    c,
                    flow,
                    token,
                    &caption,
                    &post.media,
                )
                .await;
            }
            // A client called with a bare image URL (no capture): Meta fetches it as it is.
            let image_url = post
                .image_url
                .as_deref()
                .ok_or_else(|| PlatformError::Rejected {
                    status: 0,
                    reason: "Instagram posts need an image".into(),
                })?;
            let form = [
                ("image_url", image_url),
                ("caption", caption.as_str()),
                ("access_token", token),
            ];
            let container: Created = self
                .graph
                .post_form("create_container", false, &format!("{id}/media"), &form)
                .await?;
            Ok::<_, PlatformError>(container.id)
        };
        let read_back = self.find_published(account, creds, post);
        container::share_through_container(&self.graph, flow, token, post, create, read_back).await
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
        self.graph
            .read_back::<Media>(
                &format!("{id}/media"),
                "id,caption,permalink,timestamp",
                READ_BACK_WINDOW,
                Since::Checked,
                token(creds)?,
                post,
            )
            .await
    }

    /// `ig_refresh_token`: the long-lived access token (at least 24 hours old and unexpired) is
    /// exchanged for a fresh 60-day one. There is no separate refresh token.
    async fn refresh(
        &self,
        _account: &Account,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        self.graph
            .refresh_long_lived("ig_refresh_token", creds)
            .await
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
            media: Vec::new(),
            idempotency_key: "k".into(),
            checkpoint: Default::default(),
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
