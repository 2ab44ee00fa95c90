//! A local server that answers as X's API v2 documents, with its OAuth 2.0 token endpoint:
//! `POST /2/tweets`, `GET /2/users/me`, and `POST /2/oauth2/token` (refresh-token grant, rotating).

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

#[derive(Default)]
struct Inner {
    access: String,
    refresh: String,
    tweets: Vec<Value>,
    refreshes: usize,
    /// The next tweet is refused as duplicate content.
    refuse_next: bool,
}

#[derive(Clone)]
pub struct FakeX {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeX {
    pub async fn start(access: &str, refresh: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            access: access.into(),
            refresh: refresh.into(),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/2/tweets", post(tweet))
            .route("/2/users/me", get(me))
            .route("/2/oauth2/token", post(token))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, inner }
    }

    pub fn refresh_count(&self) -> usize {
        self.inner.lock().unwrap().refreshes
    }

    pub fn refuse_next(&self) {
        self.inner.lock().unwrap().refuse_next = true;
    }

    pub fn tweets(&self) -> Vec<Value> {
        self.inner.lock().unwrap().tweets.clone()
    }
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    (status, Json(json!({ "title": title, "detail": detail, "type": "about:blank", "status": status.as_u16() }))).into_response()
}

fn authed(inner: &Inner, headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", inner.access))
}

async fn tweet(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut g = inner.lock().unwrap();
    if !authed(&g, &headers) {
        return problem(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if std::mem::take(&mut g.refuse_next) {
        return problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "You are not allowed to create a Tweet with duplicate content.",
        );
    }
    let id = (1_800_000_000_000_000_000u64 + g.tweets.len() as u64).to_string();
    let t = json!({ "id": id, "text": body["text"] });
    g.tweets.push(t.clone());
    (StatusCode::CREATED, Json(json!({ "data": t }))).into_response()
}

async fn me(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    let g = inner.lock().unwrap();
    if !authed(&g, &headers) {
        return problem(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    Json(json!({ "data": { "id": "2244994945", "name": "Alice", "username": "alice", "public_metrics": { "followers_count": 7 } } })).into_response()
}

async fn token(State(inner): State<Arc<Mutex<Inner>>>, body: axum::body::Bytes) -> Response {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let mut g = inner.lock().unwrap();
    if form.get("grant_type").map(String::as_str) != Some("refresh_token")
        || form.get("refresh_token") != Some(&g.refresh)
    {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_request", "error_description": "Value passed for the token was invalid." }))).into_response();
    }
    g.refreshes += 1;
    g.access = format!("access-{}", g.refreshes);
    g.refresh = format!("refresh-{}", g.refreshes);
    Json(json!({ "token_type": "bearer", "expires_in": 7200, "access_token": g.access, "refresh_token": g.refresh, "scope": "tweet.read tweet.write users.read offline.access" })).into_response()
}
