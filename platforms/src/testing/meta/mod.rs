//! A local Meta Graph API in one of its three shapes (platforms.md §5–7), each a server of its own
//! as each is a host of its own:
//!
//! - **Facebook Pages** (`graph.facebook.com/v24.0`): the login dialog, the code exchange for a
//!   short-lived user token, `grant_type=fb_exchange_token` for a 60-day one, `GET /me/accounts`
//!   with the page tokens (which do not expire when read with a long-lived user token, and last
//!   an hour otherwise), `GET /{page}`, `POST /{page}/feed` (a page token only; a repeat of the
//!   last post is a duplicate, 506), and the page feed. There is no refresh.
//! - **Instagram** with Instagram Login (`api.instagram.com` for the code, `graph.instagram.com`
//!   for the rest): `ig_exchange_token`, `ig_refresh_token`, `GET /{ig-user}`, the publishing
//!   limit, `POST /{ig-user}/media` (a container), `GET /{container}?fields=status_code`,
//!   `POST /{ig-user}/media_publish`, `GET /{media}?fields=permalink`, the user's media.
//! - **Threads** (`graph.threads.net/v1.0`): `th_exchange_token`, `th_refresh_token`, `GET /me`,
//!   the publishing limit, `POST /{user}/threads`, `GET /{container}?fields=status`,
//!   `POST /{user}/threads_publish`, `GET /{media}?fields=permalink`, the user's threads.
//!
//! Access tokens go in the `access_token` parameter (query or form). Errors use the Graph envelope
//! `{"error":{"message","type","code","error_subcode","fbtrace_id"}}` with HTTP 400, as Graph
//! answers an `OAuthException`; once the user takes the app's access away every token of theirs
//! answers code 190 with the subcode that platform's case documents. A container is published at
//! most once; a test says which states new containers go through, and may queue the throttles
//! and refusals Graph documents ([`Failure`]).

mod api;
mod oauth;
mod state;

use std::sync::{Arc, Mutex};

use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use self::state::{AppState, Inner};
pub use self::state::{Failure, LONG_LIVED_SECS, MetaApi, PAGE_ID, PAGE_NAME, TokenKind};
use super::recorder::{Recorder, Seen, serve};
use crate::config::PlatformApp;

#[derive(Clone)]
pub struct FakeMeta {
    pub api: MetaApi,
    pub base: String,
    pub client_id: String,
    pub client_secret: String,
    /// Every request, in order.
    pub recorder: Recorder,
    inner: Arc<Mutex<Inner>>,
}

impl FakeMeta {
    pub async fn start(api: MetaApi) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let client_id = format!(
            "{}",
            900_000_000_000_000u64 + u64::from(uuid::Uuid::new_v4().as_u128() as u32)
        );
        let client_secret = format!("meta-secret-{}", uuid::Uuid::new_v4().simple());
        let state = AppState {
            api,
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            inner: inner.clone(),
        };
        let recorder = Recorder::default();
        let app = Router::new().fallback(api::handle).with_state(state);
        let base = serve(recorder.layer(app)).await;
        Self {
            api,
            base,
            client_id,
            client_secret,
            recorder,
            inner,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// Herald's app for this platform, pointed at this server.
    pub fn app(&self) -> PlatformApp {
        PlatformApp {
            client_id: self.client_id.clone(),
            client_secret: Some(self.client_secret.clone().into()),
            api_base: Some(self.base.clone()),
            token_url: Some(self.token_url()),
            authorize_url: Some(format!("{}{}", self.base, self.api.authorize_path())),
            revoke_url: None,
        }
    }

    /// Where the code (and, on Facebook, the short-lived token) is exchanged.
    pub fn token_url(&self) -> String {
        format!("{}{}", self.base, self.api.code_path())
    }

    /// A live token of `kind`, as if the user had logged in (short-lived: an hour and a half;
    /// long-lived: 60 days; page: no expiry).
    pub fn issue_token(&self, kind: TokenKind) -> String {
        let ttl = match kind {
            TokenKind::ShortUser => Some(state::SHORT_LIVED_SECS),
            TokenKind::LongUser => Some(LONG_LIVED_SECS),
            TokenKind::Page => None,
        };
        self.inner().mint_token(kind, ttl)
    }

    /// The user takes the app's access away (or changes their password): every token dies.
    pub fn revoke_user(&self) {
        for t in self.inner().tokens.values_mut() {
            t.revoked = true;
        }
    }

    /// The next call a failure applies to (a post's creation, or a publish) answers with it;
    /// queued failures answer in order.
    pub fn fail_next(&self, failure: Failure) {
        self.inner().script.push_back(failure);
    }

    /// The states each new container reports on successive reads, staying at the last
    /// (`FINISHED` at once unless set); `ERROR` carries `error`.
    pub fn container_states(&self, states: &[&'static str], error: Option<&str>) {
        let mut g = self.inner();
        g.container_states = states.to_vec();
        g.container_error = error.map(str::to_owned);
    }

    /// `used` posts of the publishing quota spent elsewhere.
    pub fn use_quota(&self, used: usize) {
        self.inner().quota_used = used;
    }

    /// A container an earlier attempt created, in `state`: `FINISHED`, `IN_PROGRESS`, `EXPIRED`,
    /// or `PUBLISHED` (its post made, but not yet in the account's post list).
    pub fn seed_container(&self, text: &str, state: &'static str) -> String {
        let mut g = self.inner();
        let id = g.new_container(text, None, Some("https://cdn.example.com/cover.jpg"));
        if state == "PUBLISHED" {
            let media = g.mint_id();
            if let Some(c) = g.containers.get_mut(&id) {
                c.published = true;
            }
            g.posts.push(json!({ "id": media, "container": id, "text": text, "created": Utc::now().timestamp() }));
            g.unlisted.push(media);
        } else if let Some(c) = g.containers.get_mut(&id) {
            c.states = [state].into();
        }
        id
    }

    /// A post the account made elsewhere (or before Herald), at `created`.
    pub fn seed_post(&self, text: &str, link: Option<&str>, created: DateTime<Utc>) -> String {
        let mut g = self.inner();
        let id = match self.api {
            MetaApi::Facebook => format!("{PAGE_ID}_{}", g.mint_id()),
            _ => g.mint_id(),
        };
        g.posts
            .push(json!({ "id": id, "text": text, "link": link, "created": created.timestamp() }));
        id
    }

    /// Shows a published post in the account's post list (it was not listed yet).
    pub fn list(&self, post_id: &str) {
        self.inner().unlisted.retain(|u| u != post_id);
    }

    /// A post's public URL, as the fake answers it.
    pub fn permalink(&self, post_id: &str) -> String {
        api::permalink(self.api, post_id)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.recorder.all()
    }

    /// Published posts, oldest first: `{id, container, text, link, image_url}`.
    pub fn posts(&self) -> Vec<Value> {
        self.inner().posts.clone()
    }

    /// Refreshes answered with a new long-lived token.
    pub fn refreshes(&self) -> usize {
        self.inner().refreshes
    }

    /// Containers created through the API.
    pub fn containers_created(&self) -> usize {
        let creates = ["media", "threads"];
        self.recorder
            .all()
            .iter()
            .filter(|s| {
                s.method == "POST" && creates.iter().any(|c| s.path.ends_with(&format!("/{c}")))
            })
            .count()
    }

    /// Publish requests received, answered or not.
    pub fn publish_requests(&self) -> usize {
        self.inner().publish_requests
    }

    /// What kind of token this is, when it expires, and whether it still works.
    pub fn token(&self, token: &str) -> Option<(TokenKind, Option<DateTime<Utc>>, bool)> {
        self.inner()
            .tokens
            .get(token)
            .map(|t| (t.kind, t.expires_at, !t.revoked))
    }
}
