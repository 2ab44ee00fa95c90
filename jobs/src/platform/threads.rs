//! Threads (`graph.threads.net`): a TEXT container with a `link_attachment` for the preview card,
//! a wait until the container is `FINISHED`, then `threads_publish`. As on Instagram only the
//! publish step has an effect, and read-back settles a lost answer.

use async_trait::async_trait;
use reqwest::Client;
use serde::Deserialize;

use super::{
    Account, Capabilities, Credentials, Invalid, Platform, PlatformError, PlatformKind,
    PostRequest, Profile, Published, TokenSet,
    facebook::{
        as_grant_error, checked_id, graph_call, parse_graph_time, read_back_since, token,
        token_answer,
    },
    http,
    instagram::{ContainerWait, check_quota, publish_container},
    x::{lead, post_matches},
};

pub const DEFAULT_BASE: &str = "https://graph.threads.net";
pub const API_VERSION: &str = "v1.0";

const MAX_TEXT: usize = 500;
/// More links than this fail at container creation with `THREADS_API__LINK_LIMIT_EXCEEDED`
/// (since 2025-12-22, per Meta's text-attachments page).
const MAX_LINKS: usize = 5;
const READ_BACK_WINDOW: chrono::Duration = chrono::Duration::hours(72);

#[derive(Debug, Clone)]
pub struct Threads {
    http: Client,
    base: String,
    wait: ContainerWait,
}

impl Threads {
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
        checked_id(&account.platform_account_id)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{API_VERSION}/{path}", self.base)
    }

    /// The post text: the text (or else the title), a blank line, the URL. The URL is also sent
    /// as `link_attachment`; Meta counts a URL that is in both places once.
    pub fn compose(post: &PostRequest) -> String {
        match lead(post) {
            Some(lead) => format!("{lead}\n\n{}", post.url),
            None => post.url.clone(),
        }
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
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct Me {
    id: String,
    username: Option<String>,
}

#[derive(Deserialize)]
struct ThreadList {
    #[serde(default)]
    data: Vec<ThreadPost>,
}

#[derive(Deserialize)]
struct ThreadPost {
    id: String,
    text: Option<String>,
    permalink: Option<String>,
    timestamp: Option<String>,
    link_attachment_url: Option<String>,
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
        }
    }

    fn validate(&self, _account: &Account, post: &PostRequest) -> Result<(), Invalid> {
        let text = Self::compose(post);
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
        let req = self
            .http
            .get(self.url("me"))
            .query(&[("fields", "id,username"), ("access_token", token(creds)?)]);
        let me: Me = graph_call(self.kind(), "verify", false, req).await?;
        // The follower count is an insight (`threads_manage_insights`), not a profile field.
        Ok(Profile {
            handle: me.username.unwrap_or_else(|| me.id.clone()),
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
        check_quota(
            self.kind(),
            &self.http,
            &self.url(&format!("{user}/threads_publishing_limit")),
            token,
        )
        .await?;

        // Creating a container publishes nothing, so a lost answer here is only transient.
        let text = Self::compose(post);
        let form = [
            ("media_type", "TEXT"),
            ("text", text.as_str()),
            ("link_attachment", post.url.as_str()),
            ("access_token", token),
        ];
        let req = self
            .http
            .post(self.url(&format!("{user}/threads")))
            .form(&form);
        let container: Created = graph_call(self.kind(), "create_container", false, req).await?;
        let container_id = checked_id(&container.id)?;

        publish_container(
            self.kind(),
            &self.http,
            &|path: &str| self.url(path),
            container_id,
            "status,error_message",
            &format!("{user}/threads_publish"),
            token,
            self.wait,
        )
        .await
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
        let (since, since_param) = read_back_since(READ_BACK_WINDOW);
        let query = [
            ("fields", "id,text,permalink,timestamp,link_attachment_url"),
            ("since", since_param.as_str()),
            ("limit", "25"),
            ("access_token", token(creds)?),
        ];
        let req = self
            .http
            .get(self.url(&format!("{user}/threads")))
            .query(&query);
        let list: ThreadList = graph_call(self.kind(), "find_published", false, req).await?;
        let found = list.data.into_iter().find(|t| {
            let recent = t
                .timestamp
                .as_deref()
                .and_then(parse_graph_time)
                .is_none_or(|ts| ts >= since);
            let links: Vec<&str> = t.link_attachment_url.as_deref().into_iter().collect();
            recent && post_matches(post, lead(post), t.text.as_deref().unwrap_or(""), &links)
        });
        Ok(found.map(|t| Published {
            post_id: t.id,
            post_url: t.permalink,
        }))
    }

    /// `th_refresh_token`: the long-lived access token (at least 24 hours old, unexpired, with
    /// `threads_basic` still granted) is exchanged for a fresh 60-day one.
    async fn refresh(
        &self,
        _account: &Account,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        let token = token(creds).map_err(as_grant_error)?;
        let req = self
            .http
            .get(format!("{}/refresh_access_token", self.base))
            .query(&[("grant_type", "th_refresh_token"), ("access_token", token)]);
        let res = http::send(self.kind(), "refresh", false, req).await?;
        token_answer(res).await
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
