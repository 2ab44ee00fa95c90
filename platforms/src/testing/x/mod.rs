//! A local X: OAuth 2.0 as X documents it (an authorize endpoint that redirects back with a code;
//! a token endpoint that checks the client by HTTP Basic for a confidential client or `client_id`
//! in the form for a public one, the redirect URI and the PKCE verifier (S256), and issues
//! rotating refresh tokens; a rotated-out refresh token presented again revokes the whole grant,
//! as RFC 9700 §4.14.2 recommends; a dead refresh token is answered `400 invalid_request`, as X
//! does), RFC 7009 revocation, and the API calls the client makes: `GET /2/users/me`,
//! `POST /2/tweets` (a repeated text is refused as duplicate content), the user's timeline with
//! links wrapped in `t.co` and expanded in `entities.urls`, and follower lists paged by
//! `next_token`.
//!
//! Rate limits are sent as X sends them on `POST /2/tweets`: the app's 24-hour budget in
//! `x-app-limit-24hour-{limit,remaining,reset}` (only once a test gives the app a budget, whose
//! windows start with the first post), a user's spent 24-hour limit in `x-user-limit-24hour-*`, a
//! spent 15-minute window in `x-rate-limit-*`, each a 429 with problem JSON; resets are epoch
//! seconds and every answer carries `Date`.

mod api;
mod oauth;
mod state;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use self::state::{AppState, Budget, Grant, Inner, whole_second};
pub use self::state::{Failure, Post, USER};
use super::recorder::{Recorder, serve};
use crate::config::PlatformApp;

#[derive(Clone)]
pub struct FakeX {
    pub base: String,
    pub client_id: String,
    pub client_secret: String,
    /// Every request, in order.
    pub recorder: Recorder,
    inner: Arc<Mutex<Inner>>,
}

impl FakeX {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            codes: HashMap::new(),
            grants: Vec::new(),
            user: USER.into(),
            issue_refresh: true,
            rotate_refresh: true,
            deny_next: false,
            refresh_delay: Duration::ZERO,
            refreshes: 0,
            refresh_requests: 0,
            revocations: Vec::new(),
            posts: Vec::new(),
            budget: None,
            app_refusals: 0,
            users_limited: HashMap::new(),
            windows_spent: HashMap::new(),
            graph: HashMap::new(),
            page_size: 1000,
            script: VecDeque::new(),
            counter: 0,
            media: Vec::new(),
        }));
        let client_id = format!("client-{}", uuid::Uuid::new_v4().simple());
        let client_secret = format!("secret-{}", uuid::Uuid::new_v4().simple());
        let state: AppState = (inner.clone(), client_id.clone(), client_secret.clone());
        let recorder = Recorder::default();
        let app = Router::new().fallback(api::handle).with_state(state);
        let base = serve(recorder.layer(app)).await;
        Self {
            base,
            client_id,
            client_secret,
            recorder,
            inner,
        }
    }

    /// Herald's X app pointed at this server (never at X's own revocation endpoint).
    pub fn app(&self) -> PlatformApp {
        PlatformApp {
            client_id: self.client_id.clone(),
            client_secret: Some(self.client_secret.clone().into()),
            api_base: Some(self.base.clone()),
            token_url: Some(self.token_url()),
            authorize_url: Some(format!("{}/i/oauth2/authorize", self.base)),
            revoke_url: Some(format!("{}/2/oauth2/revoke", self.base)),
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/2/oauth2/token", self.base)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// A grant for `user` as if they had authorized the app: (access token, refresh token).
    pub fn grant(&self, user: &str) -> (String, String) {
        let mut g = self.inner();
        let (access, refresh) = (g.mint("at"), g.mint("rt"));
        g.grants.push(Grant {
            user: user.into(),
            access: vec![access.clone()],
            refresh: Some(refresh.clone()),
            spent: vec![],
            revoked: false,
        });
        (access, refresh)
    }

    /// Takes `token` as `user`'s access token (a connection imported with it).
    pub fn accept(&self, token: &str, user: &str) {
        self.inner().grants.push(Grant {
            user: user.into(),
            access: vec![token.into()],
            refresh: None,
            spent: vec![],
            revoked: false,
        });
    }

    /// Whether the code exchange issues a refresh token.
    pub fn issue_refresh_tokens(&self, yes: bool) {
        self.inner().issue_refresh = yes;
    }

    /// Whether a refresh answers a new refresh token (else the presented one stays good).
    pub fn rotate_refresh_tokens(&self, yes: bool) {
        self.inner().rotate_refresh = yes;
    }

    /// The next authorization is refused by the user (`error=access_denied`).
    pub fn deny_next(&self) {
        self.inner().deny_next = true;
    }

    /// How long a refresh takes to answer: a slow token endpoint widens a race.
    pub fn slow_refreshes(&self, by: Duration) {
        self.inner().refresh_delay = by;
    }

    /// The user revokes the app (every grant of theirs dies).
    pub fn revoke_user(&self, user: &str) {
        for g in self.inner().grants.iter_mut() {
            if g.user == user {
                g.revoked = true;
            }
        }
    }

    /// The next API call answers with `failure`; queued failures answer in order.
    pub fn fail_next(&self, failure: Failure) {
        self.inner().script.push_back(failure);
    }

    /// Refresh grants answered with new tokens.
    pub fn refreshes(&self) -> usize {
        self.inner().refreshes
    }

    /// Refresh requests received, answered or not.
    pub fn refresh_requests(&self) -> usize {
        self.inner().refresh_requests
    }

    /// The live refresh token of the user's newest grant.
    pub fn current_refresh_token(&self, user: &str) -> Option<String> {
        let g = self.inner();
        g.grants
            .iter()
            .rev()
            .find(|g| g.user == user && !g.revoked)
            .and_then(|g| g.refresh.clone())
    }

    /// Whether every grant of the user is revoked.
    pub fn all_revoked(&self, user: &str) -> bool {
        self.inner()
            .grants
            .iter()
            .filter(|g| g.user == user)
            .all(|g| g.revoked)
    }

    /// Tokens presented to the revocation endpoint.
    pub fn revocations(&self) -> Vec<String> {
        self.inner().revocations.clone()
    }

    /// Posts created, each as `{id, text}`.
    pub fn tweets(&self) -> Vec<Value> {
        self.posts()
            .into_iter()
            .map(|p| json!({ "id": p.id, "text": p.text }))
            .collect()
    }

    pub fn posts(&self) -> Vec<Post> {
        self.inner().posts.clone()
    }

    /// Every upload, in order.
    pub fn media(&self) -> Vec<state::Media> {
        self.inner().media.clone()
    }

    /// Every upload is forgotten, as X does a day after it (`expires_after_secs`).
    pub fn expire_media(&self) {
        for m in &mut self.inner().media {
            m.expired = true;
        }
    }

    /// A post the user made elsewhere (another app, or before Herald), at `created_at`.
    pub fn seed_post(&self, user: &str, text: &str, created_at: DateTime<Utc>) -> String {
        let mut g = self.inner();
        let id = (1_800_000_000_000_000_000u64 + g.posts.len() as u64).to_string();
        g.posts.push(Post {
            id: id.clone(),
            token: String::new(),
            user: user.into(),
            text: text.into(),
            created_at,
            window: 0,
            media_ids: Vec::new(),
        });
        id
    }

    /// The bearer tokens of every `POST /2/tweets`, answered or refused.
    pub fn requests(&self) -> Vec<String> {
        self.recorder
            .to("/2/tweets")
            .iter()
            .filter_map(|s| s.bearer().map(str::to_owned))
            .collect()
    }

    /// Gives the app `budget` posts per window of `length`, reported on every post.
    pub fn limit_app(&self, budget: u32, length: Duration) {
        self.inner().budget = Some(Budget {
            budget,
            length,
            window: None,
            window_ends: Utc::now(),
            used: 0,
        });
    }

    /// Opens a window now with `used` of the app's budget already spent (by other users of the
    /// app, say); all of it when `used` is `None`.
    pub fn spend_the_app_budget(&self, used: Option<u32>) {
        let mut g = self.inner();
        let budget = g.budget.as_mut().expect("limit_app first");
        budget.roll(Utc::now());
        budget.used = used.unwrap_or(budget.budget);
    }

    /// 429s answered because the app's budget was spent.
    pub fn app_refusals(&self) -> usize {
        self.inner().app_refusals
    }

    /// The account behind `token` has spent its own 24-hour limit for `for_how_long`.
    pub fn limit_user(&self, token: &str, for_how_long: Duration) {
        let until = whole_second(Utc::now() + for_how_long);
        self.inner().users_limited.insert(token.to_owned(), until);
    }

    /// The account behind `token` has spent its 15-minute window, which resets in `resets_in`.
    pub fn spend_window(&self, token: &str, resets_in: Duration) {
        let until = Utc::now() + resets_in;
        let until = DateTime::from_timestamp(until.timestamp(), 0).unwrap_or(until);
        self.inner().windows_spent.insert(token.to_owned(), until);
    }

    /// `user`'s followers and follows as (id, username), and how many a page holds.
    pub fn set_graph(
        &self,
        user: &str,
        followers: &[(&str, &str)],
        following: &[(&str, &str)],
        page_size: usize,
    ) {
        let owned = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(i, u)| (i.to_string(), u.to_string()))
                .collect::<Vec<_>>()
        };
        let mut g = self.inner();
        g.graph.insert((user.into(), "followers"), owned(followers));
        g.graph.insert((user.into(), "following"), owned(following));
        g.page_size = page_size;
    }
}
