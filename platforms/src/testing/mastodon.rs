//! A local server that answers as Mastodon documents: `POST /api/v1/statuses` with its
//! `Idempotency-Key` semantics (a repeated key returns the status it created, the key being stored
//! once the status exists), media uploads (`POST /api/v2/media`, `GET /api/v1/media/{id}`, and
//! `media_ids` on a status, refused unless each is the account's, processed and unattached),
//! `verify_credentials`, and the documented errors.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Multipart, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use super::recorder::{Recorder, parse_form, serve};

/// What the next `POST /api/v1/statuses` does.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 401 `{"error":"The access token is invalid"}`.
    InvalidToken,
    /// 422 `{"error":"Validation failed: ..."}`.
    Unprocessable(&'static str),
    /// 429 with the given headers.
    RateLimited(Vec<(&'static str, String)>),
    /// 503.
    Unavailable,
    /// Creates the status, then never answers (the client's timeout fires).
    CreateThenHang,
}

/// What the next `POST /api/v2/media` does.
#[derive(Debug, Clone)]
pub enum MediaReply {
    /// `202` and `206` to this many status checks before the upload is processed.
    Processing(u32),
    /// Accepted with `202`, never processed (`206` to every check): processing that failed.
    NeverProcessed,
    /// 422 `Validation failed: File file size must be less than 16 MB`.
    TooLarge,
    /// 422 `Validation failed: File content type is invalid`.
    UnsupportedType,
    /// 403 `This action is outside the authorized scopes` (a grant without `write:media`).
    OutsideScopes,
    /// 503.
    Unavailable,
}

/// An upload the instance holds.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: String,
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub file_name: Option<String>,
    /// The alt text.
    pub description: Option<String>,
    /// Status checks still answered `206` (`u32::MAX`: never processed).
    pub checks_left: u32,
    /// The status it is attached to.
    pub status_id: Option<String>,
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Value,
}

/// What the next follower-list request does.
#[derive(Debug, Clone)]
pub enum ListReply {
    /// Answers normally.
    Page,
    RateLimited {
        retry_after_secs: u64,
    },
    InvalidToken,
}

/// How often each failure answers a status post once the script is used up (the rest succeed).
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    pub unavailable: f64,
    /// A 429 with `Retry-After` of 0 to 3 seconds.
    pub rate_limited: f64,
    /// Creates the status, then never answers.
    pub hang: f64,
    pub seed: u64,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    chaos: Option<Chaos>,
    list_script: VecDeque<ListReply>,
    /// Follower and following account ids, in the order the instance lists them.
    followers: Vec<String>,
    following: Vec<String>,
    page_size: usize,
    /// Every follower-list request: (relation, max_id).
    list_requests: Vec<(String, Option<String>)>,
    received: Vec<Received>,
    statuses: Vec<Value>,
    by_key: HashMap<String, Value>,
    /// Apps registered through `POST /api/v1/apps`: client id → (secret, redirect URI).
    apps: HashMap<String, (String, String)>,
    /// Authorization codes: code → (client id, redirect URI, PKCE challenge).
    codes: HashMap<String, (String, String, Option<String>)>,
    /// Tokens presented to `POST /oauth/revoke`.
    revoked: Vec<String>,
    media_script: VecDeque<MediaReply>,
    /// Uploads by id, and their ids in upload order.
    uploads: HashMap<String, Upload>,
    upload_order: Vec<String>,
}

#[derive(Clone)]
pub struct FakeMastodon {
    pub base: String,
    /// The access token of the one account (`109`, `alice`).
    pub token: String,
    /// Every request, in order.
    pub recorder: Recorder,
    inner: Arc<Mutex<Inner>>,
}

impl FakeMastodon {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
        let app_state = (inner.clone(), token.clone());
        let app = Router::new()
            .route("/api/v1/statuses", post(create_status))
            .route("/api/v2/media", post(upload_media))
            .route("/api/v1/media/{id}", get(media_status))
            .route("/api/v1/accounts/verify_credentials", get(verify))
            .route("/api/v1/accounts/{id}/followers", get(followers))
            .route("/api/v1/accounts/{id}/following", get(following))
            .route("/api/v1/apps", post(register_app))
            .route("/oauth/authorize", get(oauth_authorize))
            .route("/oauth/token", post(oauth_token))
            .route("/oauth/revoke", post(oauth_revoke))
            .with_state(app_state);
        let recorder = Recorder::default();
        let base = serve(recorder.layer(app)).await;
        Self {
            base,
            token,
            recorder,
            inner,
        }
    }

    /// Queues replies for the next requests; once they are used up, requests succeed.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    /// Answers status posts at random from now on (after any scripted replies), reproducibly
    /// from `chaos.seed`.
    pub fn chaos(&self, chaos: Chaos) {
        self.inner.lock().unwrap().chaos = Some(chaos);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Sets the follower and following lists and how many accounts a page holds.
    pub fn set_graph(&self, followers: &[&str], following: &[&str], page_size: usize) {
        let mut g = self.inner.lock().unwrap();
        g.followers = followers.iter().map(|s| s.to_string()).collect();
        g.following = following.iter().map(|s| s.to_string()).collect();
        g.page_size = page_size;
    }

    pub fn script_lists(&self, replies: impl IntoIterator<Item = ListReply>) {
        self.inner.lock().unwrap().list_script.extend(replies);
    }

    /// Follower-list requests so far: (relation, max_id).
    pub fn list_requests(&self) -> Vec<(String, Option<String>)> {
        self.inner.lock().unwrap().list_requests.clone()
    }

    /// How many apps were registered on this instance.
    pub fn apps_registered(&self) -> usize {
        self.inner.lock().unwrap().apps.len()
    }

    /// Tokens revoked through `POST /oauth/revoke`.
    pub fn revoked(&self) -> Vec<String> {
        self.inner.lock().unwrap().revoked.clone()
    }

    /// Queues replies for the next media uploads; once used up, uploads are processed at once.
    pub fn script_media(&self, replies: impl IntoIterator<Item = MediaReply>) {
        self.inner.lock().unwrap().media_script.extend(replies);
    }

    /// Every upload the instance still holds, in upload order.
    pub fn uploads(&self) -> Vec<Upload> {
        let g = self.inner.lock().unwrap();
        g.upload_order
            .iter()
            .filter_map(|id| g.uploads.get(id).cloned())
            .collect()
    }

    /// Deletes every upload not attached to a status, as the instance's daily cleanup does.
    pub fn delete_unattached_media(&self) {
        let mut g = self.inner.lock().unwrap();
        g.uploads.retain(|_, u| u.status_id.is_some());
    }

    /// Statuses actually created (a repeat under a known key creates none).
    pub fn statuses(&self) -> Vec<Value> {
        self.inner.lock().unwrap().statuses.clone()
    }
}

impl Chaos {
    /// The next reply; the seed advances (splitmix64), so a run is reproducible.
    fn draw(&mut self) -> Option<Reply> {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let x = (z >> 11) as f64 / (1u64 << 53) as f64;
        if x < self.unavailable {
            Some(Reply::Unavailable)
        } else if x < self.unavailable + self.rate_limited {
            let secs = (z % 4).to_string();
            Some(Reply::RateLimited(vec![("retry-after", secs)]))
        } else if x < self.unavailable + self.rate_limited + self.hang {
            Some(Reply::CreateThenHang)
        } else {
            None
        }
    }
}

type AppState = (Arc<Mutex<Inner>>, String);

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {token}"))
}

async fn verify(State((_inner, token)): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &token) {
        return error(StatusCode::UNAUTHORIZED, "The access token is invalid");
    }
    Json(json!({ "id": "109", "username": "alice", "acct": "alice", "display_name": "Alice Liddell", "followers_count": 3 }))
        .into_response()
}

async fn create_status(
    State((inner, token)): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let reply = {
        let mut g = inner.lock().unwrap();
        g.received.push(Received {
            headers: headers.clone(),
            body: body.clone(),
        });
        if !authorized(&headers, &token) {
            return error(StatusCode::UNAUTHORIZED, "The access token is invalid");
        }
        if let Some(existing) = key.as_ref().and_then(|k| g.by_key.get(k)) {
            return Json(existing.clone()).into_response();
        }
        if let Some(refusal) = check_media_ids(&g, &body) {
            return refusal;
        }
        match g.script.pop_front() {
            Some(r) => Some(r),
            None => g.chaos.as_mut().and_then(Chaos::draw),
        }
    };
    let create = |inner: &Arc<Mutex<Inner>>| {
        let mut g = inner.lock().unwrap();
        let id = (110_000_000 + g.statuses.len()).to_string();
        let ids = media_ids(&body);
        let attachments: Vec<Value> = ids
            .iter()
            .filter_map(|m| {
                let u = g.uploads.get_mut(m)?;
                u.status_id = Some(id.clone());
                Some(json!({ "id": u.id, "type": "image", "description": u.description }))
            })
            .collect();
        let status = json!({
            "id": id,
            "media_attachments": attachments,
            "uri": format!("https://social.example/users/alice/statuses/{id}"),
            "url": format!("https://social.example/@alice/{id}"),
            "content": body["status"],
            "visibility": body["visibility"],
            "card": null,
            // Not Mastodon's: which request made it, so a test can tell a repeat apart.
            "idempotency_key": key,
        });
        g.statuses.push(status.clone());
        if let Some(k) = &key {
            g.by_key.insert(k.clone(), status.clone());
        }
        status
    };
    match reply {
        None => Json(create(&inner)).into_response(),
        Some(Reply::InvalidToken) => error(StatusCode::UNAUTHORIZED, "The access token is invalid"),
        Some(Reply::Unprocessable(msg)) => error(StatusCode::UNPROCESSABLE_ENTITY, msg),
        Some(Reply::Unavailable) => error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        Some(Reply::RateLimited(hs)) => {
            let mut res = error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            for (k, v) in hs {
                res.headers_mut().insert(k, v.parse().unwrap());
            }
            res
        }
        Some(Reply::CreateThenHang) => {
            create(&inner);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            error(StatusCode::GATEWAY_TIMEOUT, "unreachable")
        }
    }
}

#[derive(serde::Deserialize)]
struct Paging {
    max_id: Option<String>,
    limit: Option<usize>,
}

async fn followers(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<Paging>,
    headers: HeaderMap,
) -> Response {
    list(state, "followers", id, q, headers)
}

async fn following(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<Paging>,
    headers: HeaderMap,
) -> Response {
    list(state, "following", id, q, headers)
}

/// Pages as Mastodon does: newest first, `limit` at most 80, and a `Link` header whose `next`
/// carries `max_id` (here the index of the next account, standing in for a relationship id).
fn list(
    (inner, token): AppState,
    relation: &str,
    id: String,
    q: Paging,
    headers: HeaderMap,
) -> Response {
    let mut g = inner.lock().unwrap();
    g.list_requests
        .push((relation.to_owned(), q.max_id.clone()));
    if !authorized(&headers, &token) {
        return error(StatusCode::UNAUTHORIZED, "The access token is invalid");
    }
    match g.list_script.pop_front() {
        Some(ListReply::InvalidToken) => {
            return error(StatusCode::UNAUTHORIZED, "The access token is invalid");
        }
        Some(ListReply::Page) => {}
        Some(ListReply::RateLimited { retry_after_secs }) => {
            let mut res = error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            res.headers_mut()
                .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
            return res;
        }
        None => {}
    }
    let all = if relation == "followers" {
        g.followers.clone()
    } else {
        g.following.clone()
    };
    let size = q
        .limit
        .unwrap_or(40)
        .min(80)
        .min(if g.page_size == 0 { 80 } else { g.page_size });
    let start: usize = q
        .max_id
        .as_deref()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(size)
        .map(|a| json!({ "id": a, "username": a, "acct": format!("{a}@social.example") }))
        .collect();
    let mut res = Json(page).into_response();
    if start + size < all.len() {
        let base = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1")
            .to_owned();
        let link = format!(
            "<http://{base}/api/v1/accounts/{id}/{relation}?limit={size}&max_id={}>; rel=\"next\", <http://{base}/api/v1/accounts/{id}/{relation}?min_id=0>; rel=\"prev\"",
            start + size
        );
        res.headers_mut().insert("link", link.parse().unwrap());
    }
    res
}

/// `POST /api/v1/apps` (form or JSON fields; Herald sends a form): a new confidential app.
async fn register_app(State((inner, _)): State<AppState>, body: String) -> Response {
    let form = parse_form(body.as_bytes());
    let Some(redirect) = form.get("redirect_uris").cloned() else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: Redirect URI can't be blank",
        );
    };
    let id = format!("app-{}", uuid::Uuid::new_v4().simple());
    let secret = format!("appsecret-{}", uuid::Uuid::new_v4().simple());
    inner
        .lock()
        .unwrap()
        .apps
        .insert(id.clone(), (secret.clone(), redirect.clone()));
    Json(json!({
        "id": "1", "name": form.get("client_name"), "website": null, "scopes": form.get("scopes"),
        "redirect_uri": redirect, "redirect_uris": [redirect],
        "client_id": id, "client_secret": secret, "client_secret_expires_at": 0,
    }))
    .into_response()
}

/// `GET /oauth/authorize`: the user approves at once; back to the redirect URI with a code.
async fn oauth_authorize(
    State((inner, _)): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let mut g = inner.lock().unwrap();
    let (Some(client), Some(redirect), Some(state)) =
        (q.get("client_id"), q.get("redirect_uri"), q.get("state"))
    else {
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    if g.apps.get(client).map(|(_, r)| r) != Some(redirect) {
        return error(StatusCode::BAD_REQUEST, "invalid_client");
    }
    let code = format!("mcode-{}", uuid::Uuid::new_v4().simple());
    g.codes.insert(
        code.clone(),
        (
            client.clone(),
            redirect.clone(),
            q.get("code_challenge").cloned(),
        ),
    );
    let mut url = url::Url::parse(redirect).unwrap();
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state);
    (
        StatusCode::FOUND,
        [(axum::http::header::LOCATION, url.to_string())],
    )
        .into_response()
}

/// `POST /oauth/token`: the code grant for a registered app, PKCE checked (4.3+); the token never
/// expires and comes without a refresh token.
async fn oauth_token(State((inner, token)): State<AppState>, body: String) -> Response {
    use base64::Engine as _;
    use sha2::Digest as _;
    let form = parse_form(body.as_bytes());
    let mut g = inner.lock().unwrap();
    let client = form.get("client_id").cloned().unwrap_or_default();
    if g.apps.get(&client).map(|(s, _)| s) != form.get("client_secret") {
        return error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let Some((code_client, redirect, challenge)) = g
        .codes
        .remove(form.get("code").map(String::as_str).unwrap_or_default())
    else {
        return error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    if code_client != client || Some(&redirect) != form.get("redirect_uri") {
        return error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    if let Some(challenge) = challenge {
        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
        let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        if computed != challenge {
            return error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
    }
    Json(json!({
        "access_token": token, "token_type": "Bearer",
        "scope": "write:statuses read:accounts", "created_at": 1_700_000_000,
    }))
    .into_response()
}

/// `POST /oauth/revoke`: needs the app's credentials; always `200 {}`.
async fn oauth_revoke(State((inner, _)): State<AppState>, body: String) -> Response {
    let form = parse_form(body.as_bytes());
    let mut g = inner.lock().unwrap();
    let client = form.get("client_id").cloned().unwrap_or_default();
    if g.apps.get(&client).map(|(s, _)| s) != form.get("client_secret") {
        return error(StatusCode::FORBIDDEN, "invalid_client");
    }
    g.revoked
        .push(form.get("token").cloned().unwrap_or_default());
    Json(json!({})).into_response()
}

fn media_ids(body: &Value) -> Vec<String> {
    body["media_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A status's `media_ids` as Mastodon checks them (`PostStatusService`): at most 4, each an
/// unattached upload of the account that has finished processing.
fn check_media_ids(g: &Inner, body: &Value) -> Option<Response> {
    let ids = media_ids(body);
    if ids.len() > 4 {
        return Some(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: Media attachments must be at most 4",
        ));
    }
    let missing: Vec<&str> = ids
        .iter()
        .filter(|id| g.uploads.get(*id).is_none_or(|u| u.status_id.is_some()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Some(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("Media attachment(s) not found: {}", missing.join(", ")),
        ));
    }
    if ids.iter().any(|id| g.uploads[id].checks_left > 0) {
        return Some(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Cannot attach files that have not finished processing. Try again in a moment!",
        ));
    }
    None
}

/// `POST /api/v2/media`: multipart `file` (and `description`); `200` when processed at once,
/// `202` (with `url: null`) while it is processed.
async fn upload_media(
    State((inner, token)): State<AppState>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    if !authorized(&headers, &token) {
        return error(StatusCode::UNAUTHORIZED, "The access token is invalid");
    }
    let (mut file, mut description) = (None, None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("file") => {
                let name = field.file_name().map(str::to_owned);
                let ct = field.content_type().unwrap_or_default().to_owned();
                let bytes = field.bytes().await.unwrap_or_default().to_vec();
                file = Some((name, ct, bytes));
            }
            Some("description") => description = field.text().await.ok(),
            _ => {}
        }
    }
    let Some((file_name, content_type, bytes)) = file else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: File can't be blank",
        );
    };
    let mut g = inner.lock().unwrap();
    let checks_left = match g.media_script.pop_front() {
        None => 0,
        Some(MediaReply::Processing(n)) => n,
        Some(MediaReply::NeverProcessed) => u32::MAX,
        Some(MediaReply::TooLarge) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation failed: File file size must be less than 16 MB",
            );
        }
        Some(MediaReply::UnsupportedType) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation failed: File content type is invalid",
            );
        }
        Some(MediaReply::OutsideScopes) => {
            return error(
                StatusCode::FORBIDDEN,
                "This action is outside the authorized scopes",
            );
        }
        Some(MediaReply::Unavailable) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        }
    };
    let id = (120_000_000 + g.upload_order.len()).to_string();
    let upload = Upload {
        id: id.clone(),
        bytes,
        content_type,
        file_name,
        description,
        checks_left,
        status_id: None,
    };
    let view = attachment_view(&upload);
    g.uploads.insert(id.clone(), upload);
    g.upload_order.push(id);
    let status = if checks_left == 0 {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(view)).into_response()
}

fn attachment_view(u: &Upload) -> Value {
    let processed = u.checks_left == 0;
    json!({
        "id": u.id, "type": "image", "description": u.description,
        "url": processed.then(|| format!("https://files.social.example/media/{}", u.id)),
        "preview_url": format!("https://files.social.example/media/{}/small", u.id),
    })
}

/// `GET /api/v1/media/{id}`: `206` while processing, `200` once done; `404` for an upload the
/// account does not have unattached (Mastodon looks among `media_attachments.where(status_id: nil)`).
async fn media_status(
    State((inner, token)): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, &token) {
        return error(StatusCode::UNAUTHORIZED, "The access token is invalid");
    }
    let mut g = inner.lock().unwrap();
    let Some(u) = g.uploads.get_mut(&id).filter(|u| u.status_id.is_none()) else {
        return error(StatusCode::NOT_FOUND, "Record not found");
    };
    if u.checks_left > 0 {
        if u.checks_left != u32::MAX {
            u.checks_left -= 1;
        }
        return (StatusCode::PARTIAL_CONTENT, Json(attachment_view(u))).into_response();
    }
    Json(attachment_view(u)).into_response()
}
