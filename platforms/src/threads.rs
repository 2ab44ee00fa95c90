//! Threads (`graph.threads.net`): a TEXT container with a `link_attachment` for the preview card,
//! a wait until the container is `FINISHED`, then `threads_publish`. As on Instagram only the
//! publish step has an effect, and read-back settles a lost answer.

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

pub const DEFAULT_BASE: &str = "https://graph.threads.net";
pub const API_VERSION: &str = "v1.0";
pub const DEFAULT_TOKEN_URL: &str = "https://graph.threads.net/oauth/access_token";
const AUTHORIZE_URL: &str = "https://threads.net/oauth/authorize";
const SCOPES: &str = "threads_basic,threads_content_publish";

const MAX_TEXT: usize = 500;
/// More links than this fail at container creation with `THREADS_API__LINK_LIMIT_EXCEEDED`
/// (since 2025-12-22, per Meta's text-attachments page).
const MAX_LINKS: usize = 5;
const READ_BACK_WINDOW: chrono::Duration = chrono::Duration::hours(72);

/// Herald's Threads app as configured (`HERALD_THREADS_*`): Meta takes the app secret rather than
/// PKCE, and documents no revocation endpoint (an operator may configure one).
pub fn oauth_app(app: &PlatformApp) -> OAuthApp {
    app.secret_flow(DEFAULT_TOKEN_URL, AUTHORIZE_URL, SCOPES)
}

#[derive(Debug, Clone)]
pub struct Threads {
    graph: Graph,
    wait: ContainerWait,
    /// The app connect flows use; `None` for a client built without one (its tests).
    app: Option<OAuthApp>,
}

impl Threads {
    pub fn new(http: Client, base_url: impl Into<String>) -> Self {
        Self {
            graph: Graph::new(PlatformKind::Threads, http, base_url, API_VERSION),
            wait: ContainerWait::default(),
            app: None,
        }
    }

    /// Threads with Herald's app as configured.
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
        checked_id(&account.platform_account_id)
    }
}

/// Threads' length: characters, except that an emoji counts as its UTF-8 byte length (Meta's posts
/// page). Emoji are recognised by block, which also counts a few pictographic symbols as bytes: it
/// can only count more than Threads does.
pub fn threads_length(text: &str) -> usize {
    text.chars()
        .map(|c| match c as u32 {
            0x1F000..=0x1FAFF
            | 0x2600..=0x27BF
            | 0x2300..=0x23FF
            | 0x2B00..=0x2BFF
            | 0xFE0F
            | 0x200D
            | 0xE0020..=0xE007F => c.len_utf8(),
            _ => 1,
        })
        .sum()
}

/// The distinct `http(s)://` links in the text plus the attachment.
fn link_count(text: &str, attachment: &str) -> usize {
    let mut links: Vec<&str> = text
        .split_whitespace()
        .filter(|w| {
            let w = w.to_ascii_lowercase();
            w.starts_with("http://") || w.starts_with("https://")
        })
        .chain(std::iter::once(attachment))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    links.sort_unstable();
    links.dedup();
    links.len()
}

#[derive(Deserialize)]
struct Me {
    id: String,
    username: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct ThreadPost {
    id: String,
    text: Option<String>,
    permalink: Option<String>,
    timestamp: Option<String>,
    link_attachment_url: Option<String>,
}

impl ListedPost for ThreadPost {
    fn timestamp(&self) -> Option<&str> {
        self.timestamp.as_deref()
    }

    fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    fn links(&self) -> Vec<&str> {
        self.link_attachment_url.as_deref().into_iter().collect()
    }

    fn published(self) -> Published {
        Published {
            post_id: self.id,
            post_url: self.permalink,
            app_budget: None,
        }
    }
}

#[async_trait]
impl Platform for Threads {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Threads
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotency_window: None,
            refresh: true,
            followers: false,
            requires_image: false,
            checkpoint_settles_outcome: true,
        }
    }

    fn oauth_app(&self) -> Option<&OAuthApp> {
        self.app.as_ref()
    }

    /// The code's short-lived token becomes a 60-day one (`th_exchange_token`).
    async fn exchange(
        &self,
        app: &OAuthApp,
        token: &CodeToken,
        _instance: Option<&str>,
    ) -> Result<Vec<Granted>, PlatformError> {
        self.graph
            .exchange_code_token("th_exchange_token", app, token)
            .await
    }

    /// JPEG and PNG up to 8 MB each; several images are a carousel of up to 20; alt text up to
    /// 1,000 characters.
    fn media_rules(&self) -> MediaRules {
        MediaRules {
            max_images: 20,
            max_alt: Some((1000, Count::Chars)),
            types: &[ImageType::Jpeg, ImageType::Png],
            max_bytes: 8 * 1024 * 1024,
            max_pixels: None,
        }
    }

    fn validate(&self, _account: &Account, post: &PostRequest) -> Result<(), Invalid> {
        let text = caption(post);
        let length = threads_length(&text);
        if length > MAX_TEXT {
            return Err(Invalid {
                field: "text",
                code: "text_too_long",
                message: format!(
                    "Threads allows {MAX_TEXT} characters (an emoji counts as its UTF-8 bytes); this share has {length}"
                ),
            });
        }
        let links = link_count(&text, &post.url);
        if links > MAX_LINKS {
            return Err(Invalid {
                field: "text",
                code: "too_many_links",
                message: format!(
                    "Threads allows {MAX_LINKS} links in a post; this share has {links}"
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
        let me: Me = self
            .graph
            .fields("verify", "me", "id,username,name", token(creds)?)
            .await?;
        // The follower count is an insight (`threads_manage_insights`), not a profile field.
        Ok(Profile {
            handle: me.username.unwrap_or_else(|| me.id.clone()),
            display_name: crate::types::display_name(me.name),
            platform_account_id: me.id,
            followers_count: None,
        })
    }

    async fn share(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Published, PlatformError> {
        let user = Self::user_id(account)?;
        let token = token(creds)?;
        let flow = ContainerFlow {
            publish_edge: &format!("{user}/threads_publish"),
            status_fields: "status,error_message",
            wait: self.wait,
        };
        let create = async {
            container::check_quota(
                &self.graph,
                &format!("{user}/threads_publishing_limit"),
                token,
            )
            .await?;
            // Creating a container publishes nothing, so a lost answer here is only transient.
            let caption = caption(post);
            if !post.media.is_empty() {
                // A link attachment is for text posts only: with images the link stays in the
                // text, where Threads links it.
                let c = ImageContainers {
                    edge: &format!("{user}/threads"),
                    text_field: "text",
                    names_image_type: true,
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
            let form = [
                ("media_type", "TEXT"),
                ("text", caption.as_str()),
                ("link_attachment", post.url.as_str()),
                ("access_token", token),
            ];
            let container: Created = self
                .graph
                .post_form("create_container", false, &format!("{user}/threads"), &form)
                .await?;
            Ok::<_, PlatformError>(container.id)
        };
        let read_back = self.find_published(account, creds, post);
        container::share_through_container(&self.graph, flow, token, post, create, read_back).await
    }

    /// Reads the user's threads since [`READ_BACK_WINDOW`] and matches the share's URL (in the
    /// text or as the link attachment) and words.
    async fn find_published(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Option<Published>, PlatformError> {
        let user = Self::user_id(account)?;
        self.graph
            .read_back::<ThreadPost>(
                &format!("{user}/threads"),
                "id,text,permalink,timestamp,link_attachment_url",
                READ_BACK_WINDOW,
                Since::Asked,
                token(creds)?,
                post,
            )
            .await
    }

    /// `th_refresh_token`: the long-lived access token (at least 24 hours old, unexpired, with
    /// `threads_basic` still granted) is exchanged for a fresh 60-day one.
    async fn refresh(
        &self,
        _account: &Account,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        self.graph
            .refresh_long_lived("th_refresh_token", creds)
            .await
    }

    // `followers_page` stays unsupported: Threads exposes only a `followers_count` insight
    // (`threads_insights?metric=followers_count`), no list.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_count_as_their_utf8_bytes() {
        assert_eq!(threads_length("hello"), 5);
        assert_eq!(threads_length("héllo"), 5);
        assert_eq!(threads_length("😀"), 4);
        assert_eq!(threads_length("❤\u{FE0F}"), 6);
        assert_eq!(threads_length("日本"), 2);
    }

    #[test]
    fn links_are_counted_once_each_with_the_attachment() {
        assert_eq!(link_count("a https://a.test/ b", "https://a.test"), 1);
        assert_eq!(
            link_count(
                "https://a.test https://b.test http://c.test",
                "https://d.test"
            ),
            4
        );
    }
}
