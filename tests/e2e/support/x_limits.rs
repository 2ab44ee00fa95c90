//! A local X API for rate limits, as X documents them on `POST /2/tweets`: an app-wide budget per
//! window sent in `x-app-limit-24hour-{limit,remaining,reset}` on every answer, per-user limits in
//! `x-user-limit-24hour-*`, and a 429 with problem JSON when either is spent. Windows are short
//! (the test says how long) and start with the first post; resets are epoch seconds, as X sends
//! them. The bearer token says which account posts.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use chrono::{DateTime, Utc};
use serde_json::json;

/// One accepted post.
#[derive(Debug, Clone)]
pub struct Post {
    /// The bearer token it came with (one per account in these tests).
    pub token: String,
    /// Which app window it counted in, from 0.
    pub window: u32,
}

struct Inner {
    budget: u32,
    length: Duration,
    window: Option<u32>,
    window_ends: DateTime<Utc>,
    used: u32,
    /// Accounts whose own limit is spent, until when.
    users_limited: HashMap<String, DateTime<Utc>>,
    posts: Vec<Post>,
    requests: Vec<String>,
    app_refusals: usize,
}

#[derive(Clone)]
pub struct FakeX {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeX {
    /// An X whose app may post `budget` times per window of `length`.
    pub async fn start(budget: u32, length: Duration) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            budget,
            length,
            window: None,
            window_ends: Utc::now(),
            used: 0,
            users_limited: HashMap::new(),
            posts: Vec::new(),
            requests: Vec::new(),
            app_refusals: 0,
        }));
        let app = Router::new()
            .route("/2/tweets", post(tweet))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, inner }
    }

    /// Herald's X app pointed at this server.
    pub fn app(&self) -> herald_platforms::config::PlatformApp {
        herald_platforms::config::PlatformApp {
            client_id: "x-app".into(),
            client_secret: Some("x-secret".to_owned().into()),
            api_base: Some(self.base.clone()),
            token_url: None,
            authorize_url: None,
            // Never X's own: a removed connection must not reach the real platform.
            revoke_url: Some(format!("{}/2/oauth2/revoke", self.base)),
        }
    }

    /// Opens a window now with its whole budget already spent (by another app's user, say).
    pub fn spend_the_app_budget(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.roll(Utc::now());
        inner.used = inner.budget;
    }

    /// The account behind `token` has spent its own limit for `for_how_long`.
    pub fn limit_user(&self, token: &str, for_how_long: Duration) {
        let until = whole_second(Utc::now() + for_how_long);
        self.inner
            .lock()
            .unwrap()
            .users_limited
            .insert(token.to_owned(), until);
    }

    pub fn posts(&self) -> Vec<Post> {
        self.inner.lock().unwrap().posts.clone()
    }

    /// The tokens of every `POST /2/tweets`, answered or refused.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// 429s answered because the app's budget was spent.
    pub fn app_refusals(&self) -> usize {
        self.inner.lock().unwrap().app_refusals
    }
}

impl Inner {
    fn roll(&mut self, now: DateTime<Utc>) {
        if self.window.is_none() || now >= self.window_ends {
            self.window = Some(self.window.map_or(0, |w| w + 1));
            self.window_ends = whole_second(now) + self.length;
            self.used = 0;
        }
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        let reset = self.window_ends.timestamp().to_string();
        for (name, value) in [
            ("x-app-limit-24hour-limit", self.budget.to_string()),
            (
                "x-app-limit-24hour-remaining",
                (self.budget.saturating_sub(self.used)).to_string(),
            ),
            ("x-app-limit-24hour-reset", reset),
        ] {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        h
    }
}

/// The next whole second: X's resets are epoch seconds.
fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp() + 1, 0).unwrap()
}

fn too_many(mut headers: HeaderMap) -> Response {
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/problem+json"),
    );
    (
        StatusCode::TOO_MANY_REQUESTS,
        headers,
        Json(json!({"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank", "status": 429})),
    )
        .into_response()
}

async fn tweet(State(s): State<Arc<Mutex<Inner>>>, request: HeaderMap) -> Response {
    let token = request
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let now = Utc::now();
    let mut inner = s.lock().unwrap();
    inner.requests.push(token.clone());
    inner.roll(now);
    let mut headers = inner.headers();
    if let Some(until) = inner
        .users_limited
        .get(&token)
        .copied()
        .filter(|t| *t > now)
    {
        for (name, value) in [
            ("x-user-limit-24hour-limit", "100".to_owned()),
            ("x-user-limit-24hour-remaining", "0".to_owned()),
            ("x-user-limit-24hour-reset", until.timestamp().to_string()),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        return too_many(headers);
    }
    if inner.used >= inner.budget {
        inner.app_refusals += 1;
        return too_many(headers);
    }
    inner.used += 1;
    let window = inner.window.unwrap_or_default();
    inner.posts.push(Post {
        token: token.clone(),
        window,
    });
    let id = format!("18{:017}", inner.posts.len());
    let headers = inner.headers();
    (
        StatusCode::CREATED,
        headers,
        Json(json!({"data": {"id": id, "text": "…", "edit_history_tweet_ids": [id]}})),
    )
        .into_response()
}
