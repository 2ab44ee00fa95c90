//! A local Instagram (Graph API, Instagram Login host) for the container publish flow, as Meta
//! documents it: `content_publishing_limit`, `POST /{ig-user}/media` creating a container,
//! `GET /{container}?fields=status_code` (`FINISHED`, then `PUBLISHED` once published),
//! `POST /{ig-user}/media_publish`, the media's `permalink`, and the user's media list that
//! read-back reads. A container is published at most once. It can lose the answer to a publish
//! that went through, as a dropped connection would.

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use super::oauth_provider::parse_form;

pub const IG_USER: &str = "17841400000000001";

struct Container {
    id: String,
    caption: String,
    /// The media id, once published.
    published: Option<String>,
}

#[derive(Default)]
struct Inner {
    containers: Vec<Container>,
    /// Published media: (id, caption).
    media: Vec<(String, String)>,
    publish_requests: usize,
    lose_next_publish_answer: bool,
}

#[derive(Clone)]
pub struct FakeInstagram {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

type AppState = Arc<Mutex<Inner>>;

impl FakeInstagram {
    pub async fn start() -> Self {
        let inner: AppState = Arc::default();
        let app = Router::new()
            .route("/v24.0/{id}", get(node))
            .route("/v24.0/{id}/content_publishing_limit", get(quota))
            .route("/v24.0/{id}/media", post(create_container).get(media_list))
            .route("/v24.0/{id}/media_publish", post(publish))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, inner }
    }

    /// Herald's Instagram app pointed at this server.
    pub fn app(&self) -> herald_platforms::config::PlatformApp {
        herald_platforms::config::PlatformApp {
            client_id: "ig-app".into(),
            client_secret: Some("ig-secret".to_owned().into()),
            api_base: Some(self.base.clone()),
            token_url: None,
            authorize_url: None,
            revoke_url: None,
        }
    }

    /// The next publish goes through, but its answer never comes back.
    pub fn lose_next_publish_answer(&self) {
        self.inner.lock().unwrap().lose_next_publish_answer = true;
    }

    pub fn containers_created(&self) -> usize {
        self.inner.lock().unwrap().containers.len()
    }

    pub fn publish_requests(&self) -> usize {
        self.inner.lock().unwrap().publish_requests
    }

    /// Published media ids.
    pub fn media(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        inner.media.iter().map(|(id, _)| id.clone()).collect()
    }
}

fn graph_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "fake"}})),
    )
        .into_response()
}

async fn quota() -> Json<Value> {
    Json(
        json!({"data": [{"quota_usage": 0, "config": {"quota_total": 100, "quota_duration": 86_400}}]}),
    )
}

async fn create_container(State(s): State<AppState>, body: Bytes) -> Json<Value> {
    let form = parse_form(&String::from_utf8_lossy(&body));
    let mut inner = s.lock().unwrap();
    let id = format!("1789{:011}", inner.containers.len() + 1);
    inner.containers.push(Container {
        id: id.clone(),
        caption: form.get("caption").cloned().unwrap_or_default(),
        published: None,
    });
    Json(json!({ "id": id }))
}

/// A container's status, or a media's permalink.
async fn node(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let inner = s.lock().unwrap();
    if let Some(c) = inner.containers.iter().find(|c| c.id == id) {
        let state = if c.published.is_some() {
            "PUBLISHED"
        } else {
            "FINISHED"
        };
        return Json(json!({ "id": id, "status_code": state, "status": state })).into_response();
    }
    if inner.media.iter().any(|(m, _)| *m == id) {
        return Json(
            json!({ "id": id, "permalink": format!("https://www.instagram.com/p/{id}/") }),
        )
        .into_response();
    }
    graph_error(
        StatusCode::BAD_REQUEST,
        100,
        "Unsupported get request. Object does not exist",
    )
}

async fn publish(State(s): State<AppState>, body: Bytes) -> Response {
    let form = parse_form(&String::from_utf8_lossy(&body));
    let creation = form.get("creation_id").cloned().unwrap_or_default();
    let (media_id, lose) = {
        let mut inner = s.lock().unwrap();
        inner.publish_requests += 1;
        let media_id = format!("1792{:011}", inner.media.len() + 1);
        let Some(container) = inner.containers.iter_mut().find(|c| c.id == creation) else {
            return graph_error(StatusCode::BAD_REQUEST, 100, "Invalid parameter");
        };
        if container.published.is_some() {
            // The fake's stand-in for Meta's refusal to publish a container twice.
            return graph_error(
                StatusCode::BAD_REQUEST,
                100,
                "The media container has already been published",
            );
        }
        container.published = Some(media_id.clone());
        let caption = container.caption.clone();
        inner.media.push((media_id.clone(), caption));
        (
            media_id,
            std::mem::take(&mut inner.lose_next_publish_answer),
        )
    };
    if lose {
        std::future::pending::<()>().await;
    }
    Json(json!({ "id": media_id })).into_response()
}

async fn media_list(State(s): State<AppState>) -> Json<Value> {
    let inner = s.lock().unwrap();
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S+0000")
        .to_string();
    let data: Vec<Value> = inner
        .media
        .iter()
        .rev()
        .map(|(id, caption)| {
            json!({ "id": id, "caption": caption, "timestamp": now, "permalink": format!("https://www.instagram.com/p/{id}/") })
        })
        .collect();
    Json(json!({ "data": data }))
}
