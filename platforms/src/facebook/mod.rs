//! Facebook Pages (Graph API): `POST /{page-id}/feed` with the page token, `GET /{page-id}`, and
//! read-back from the page feed. Page tokens taken from a long-lived user token do not expire and
//! there is no refresh grant: [`Facebook::exchange_long_lived`] is the one-off exchange done at
//! connect time, after which `GET /me/accounts` grants one connection per page. The Graph API helpers it shares with Instagram and Threads are in [`super::meta`].
//! A share's images are page photos attached to the post ([`photos`]).

mod photos;

use async_trait::async_trait;
use reqwest::Client;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::{
    config::PlatformApp,
    error::PlatformError,
    kind::PlatformKind,
    media::{Count, ImageType, MediaRules},
    meta::graph::{self, Graph, ListedPost, Since, checked_id, token},
    oauth::{CodeToken, Granted, OAuthApp, OAuthClient},
    platform::{Capabilities, Platform},
    text::lead,
    types::{Account, Credentials, Invalid, PostRequest, Profile, Published, TokenSet},
};

pub const DEFAULT_BASE: &str = "https://graph.facebook.com";
/// Graph versions live about two years; pinned so a default change cannot alter answers.
pub const API_VERSION: &str = "v24.0";
pub const DEFAULT_TOKEN_URL: &str = "https://graph.facebook.com/v24.0/oauth/access_token";
/// Meta takes a comma-separated list.
const SCOPES: &str = "pages_show_list,pages_manage_posts,pages_read_engagement";

/// Facebook's own limit on a post's text (Postiz uses the same figure; Meta's docs do not state it).
const MAX_MESSAGE_CHARS: usize = 63_206;
const READ_BACK_WINDOW: chrono::Duration = chrono::Duration::hours(72);

/// Herald's Facebook app as configured (`HERALD_FACEBOOK_*`). Meta takes the app secret rather
/// than PKCE. No revocation unless an operator configures one: `DELETE /{user}/permissions`
/// would end the user's grant for every page, not the one connection removed.
pub fn oauth_app(app: &PlatformApp) -> OAuthApp {
    app.secret_flow(
        DEFAULT_TOKEN_URL,
        &format!("https://www.facebook.com/{API_VERSION}/dialog/oauth"),
        SCOPES,
    )
}

#[derive(Debug, Clone)]
pub struct Facebook {
    graph: Graph,
    /// The app connect flows use; `None` for a client built without one (its tests).
    app: Option<OAuthApp>,
}

impl Facebook {
    pub fn new(http: Client, base_url: impl Into<String>) -> Self {
        Self {
            graph: Graph::new(PlatformKind::FacebookPages, http, base_url, API_VERSION),
            app: None,
        }
    }

    /// Facebook Pages with Herald's app as configured.
    pub fn from_config(http: Client, app: &PlatformApp) -> Self {
        Self {
            app: Some(oauth_app(app)),
            ..Self::new(http, app.api_base_or(DEFAULT_BASE))
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
        let req = self.graph.http().get(&app.token_url).query(&query);
        graph::exchange(PlatformKind::FacebookPages, "exchange_token", req).await
    }
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
struct FeedPost {
    id: String,
    message: Option<String>,
    link: Option<String>,
    created_time: Option<String>,
    permalink_url: Option<String>,
}

impl ListedPost for FeedPost {
    fn timestamp(&self) -> Option<&str> {
        self.created_time.as_deref()
    }

    fn text(&self) -> Option<&str> {
        self.message.as_deref()
    }

    fn links(&self) -> Vec<&str> {
        self.link.as_deref().into_iter().collect()
    }

    fn published(self) -> Published {
        Published {
            post_url: Some(self.permalink_url.unwrap_or_else(|| post_url(&self.id))),
            post_id: self.id,
            app_budget: None,
        }
    }
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
            checkpoint_settles_outcome: false,
        }
    }

    fn oauth_app(&self) -> Option<&OAuthApp> {
        self.app.as_ref()
    }

    /// The code's short-lived user token becomes a long-lived one, which reads the pages the
    /// user granted with their page tokens (`GET /me/accounts`): one account per page. Page
    /// tokens read with a long-lived user token do not expire.
    async fn exchange(
        &self,
        app: &OAuthApp,
        token: &CodeToken,
        _instance: Option<&str>,
    ) -> Result<Vec<Granted>, PlatformError> {
        #[derive(Deserialize)]
        struct Pages {
            #[serde(default)]
            data: Vec<PageToken>,
        }
        #[derive(Deserialize)]
        struct PageToken {
            id: String,
            access_token: Option<String>,
        }
        let user = self
            .exchange_long_lived(&app.client, &token.access())
            .await?;
        let req = self
            .graph
            .http()
            .get(self.graph.url("me/accounts"))
            .query(&[
                ("fields", "id,name,access_token"),
                ("access_token", user.access_token.expose_secret()),
            ]);
        let pages: Pages = graph::graph_call(self.kind(), "pages", false, req).await?;
        Ok(pages
            .data
            .into_iter()
            .filter_map(|p| {
                let token = p.access_token?;
                let mut extras = serde_json::Map::new();
                extras.insert("page_id".into(), p.id.clone().into());
                Some(Granted {
                    account: Account {
                        platform_account_id: p.id,
                        handle: String::new(),
                        extras,
                    },
                    creds: Credentials {
                        access_token: Some(SecretString::from(token)),
                        ..Credentials::default()
                    },
                })
            })
            .collect())
    }

    /// Page photos: JPEG, PNG and GIF up to 4 MB each (Facebook's recommendation for photos),
    /// up to 10 attached to one post; alt text (`alt_text_custom`) up to 1,000 characters as
    /// Herald holds Meta's platforms to it.
    fn media_rules(&self) -> MediaRules {
        MediaRules {
            max_images: 10,
            max_alt: Some((1000, Count::Chars)),
            types: &[ImageType::Jpeg, ImageType::Png, ImageType::Gif],
            max_bytes: 4 * 1024 * 1024,
            max_pixels: None,
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
        let p: Page = self
            .graph
            .fields("verify", page, "id,name", token(creds)?)
            .await?;
        let display_name = crate::types::display_name(p.name);
        Ok(Profile {
            handle: display_name.clone().unwrap_or_else(|| p.id.clone()),
            display_name,
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
        let token = token(creds)?;
        let attached = self.attach_photos(page, token, post).await?;
        // With photos there is no link preview: the link goes into the message.
        let message = match (lead(post), attached.is_empty()) {
            (lead, true) => lead.map(str::to_owned),
            (Some(lead), false) => Some(format!("{lead}\n\n{}", post.url)),
            (None, false) => Some(post.url.clone()),
        };
        let mut form = vec![
            ("published", "true"),
            ("fields", "id,permalink_url"),
            ("access_token", token),
        ];
        if attached.is_empty() {
            form.push(("link", post.url.as_str()));
        }
        if let Some(message) = &message {
            form.push(("message", message));
        }
        form.extend(attached.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let c: Created = self
            .graph
            .post_form("share", true, &format!("{page}/feed"), &form)
            .await?;
        let post_url = c.permalink_url.unwrap_or_else(|| post_url(&c.id));
        Ok(Published {
            post_id: c.id,
            post_url: Some(post_url),
            app_budget: None,
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
        self.graph
            .read_back::<FeedPost>(
                &format!("{page}/feed"),
                "id,message,link,created_time,permalink_url",
                READ_BACK_WINDOW,
                Since::Asked,
                token(creds)?,
                post,
            )
            .await
    }

    // `refresh` stays unsupported: a page token has no refresh grant, and the long-lived user
    // token it came from can only be re-exchanged while valid (see `exchange_long_lived`).

    // `followers_page` stays unsupported: the Graph API lists no individual followers of a page;
    // only the `followers_count` and `fan_count` fields exist.
}
