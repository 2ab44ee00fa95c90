//! A local LinkedIn (platforms.md §4): the 3-legged authorization code flow with the client
//! secret in the form (`/oauth/v2/authorization`, `/oauth/v2/accessToken`), 60-day access tokens,
//! refresh tokens only for an app LinkedIn approved for them (365 days, the same token returned on
//! every refresh, its lifetime not reset), `GET /v2/userinfo`, and the versioned Posts API
//! (`POST /rest/posts`, which requires `LinkedIn-Version` and `X-Restli-Protocol-Version: 2.0.0`
//! and answers 201 with the post's URN in `x-restli-id`). Dead credentials answer 401 with
//! LinkedIn's error body: `serviceErrorCode` 65601 `REVOKED_ACCESS_TOKEN` once the member revoked
//! the app, 65600 `INVALID_ACCESS_TOKEN` for a token it never issued. A post whose commentary
//! and article repeat one the author already has is refused `422` as a duplicate; an author's
//! posts are listed by `GET /rest/posts?q=author`, newest first.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::recorder::{Recorder, Seen, serve};
use crate::config::PlatformApp;

/// The member who signs in.
pub const MEMBER: &str = "Dk968RHxiO";
/// The organization (a LinkedIn page) the member administers.
pub const ORGANIZATION: &str = "5";

/// A failure LinkedIn documents that the next API call answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 429 `TOO_MANY_REQUESTS` (serviceErrorCode 101): the application's daily limit.
    Throttled,
    /// 504 `GATEWAY_TIMEOUT`.
    GatewayTimeout,
}
/// 60 days, as LinkedIn issues access tokens.
const ACCESS_TTL: i64 = 5_184_000;
const REFRESH_TTL: i64 = 31_536_000;
const SCOPE: &str = "email,openid,profile,w_member_social";

struct Grant {
    access: Vec<String>,
    refresh: Option<String>,
    refresh_expires_at: chrono::DateTime<chrono::Utc>,
    revoked: bool,
}

/// An image's content type and bytes.
type Uploaded = (String, Vec<u8>);

#[derive(Default)]
struct Inner {
    /// code → redirect URI it was issued for; taken on exchange.
    codes: HashMap<String, String>,
    grants: Vec<Grant>,
    /// Whether this app is one LinkedIn issues refresh tokens to (approved partners).
    partner: bool,
    refreshes: usize,
    /// Created posts: the request body with the URN and `createdAt` assigned.
    posts: Vec<Value>,
    /// Registered images by URN: (owner, content type and bytes once uploaded).
    images: HashMap<String, (String, Option<Uploaded>)>,
    script: VecDeque<Failure>,
    counter: u64,
}

impl Inner {
    fn mint(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!(
            "li-{kind}-{}-{}",
            self.counter,
            uuid::Uuid::new_v4().simple()
        )
    }
}

#[derive(Clone)]
pub struct FakeLinkedin {
    pub base: String,
    pub client_id: String,
    pub client_secret: String,
    /// Every request, in order.
    pub recorder: Recorder,
    inner: Arc<Mutex<Inner>>,
}

type AppState = (Arc<Mutex<Inner>>, String, String);

impl FakeLinkedin {
    /// `partner`: whether the app gets refresh tokens.
    pub async fn start(partner: bool) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            partner,
            ..Inner::default()
        }));
        let client_id = format!("li-client-{}", uuid::Uuid::new_v4().simple());
        let client_secret = format!("li-secret-{}", uuid::Uuid::new_v4().simple());
        let app = Router::new().fallback(handle).with_state((
            inner.clone(),
            client_id.clone(),
            client_secret.clone(),
        ));
        let recorder = Recorder::default();
        let base = serve(recorder.layer(app)).await;
        Self {
            base,
            client_id,
            client_secret,
            recorder,
            inner,
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth/v2/accessToken", self.base)
    }

    /// A grant for the member as if they had authorized the app: the access token, and the
    /// refresh token a partner app gets.
    pub fn grant(&self) -> (String, Option<String>) {
        let mut g = self.inner.lock().unwrap();
        let access = g.mint("at");
        let refresh = g.partner.then(|| g.mint("rt"));
        g.grants.push(Grant {
            access: vec![access.clone()],
            refresh: refresh.clone(),
            refresh_expires_at: chrono::Utc::now() + chrono::Duration::seconds(REFRESH_TTL),
            revoked: false,
        });
        (access, refresh)
    }

    /// The next API call answers with `failure`; queued failures answer in order.
    pub fn fail_next(&self, failure: Failure) {
        self.inner.lock().unwrap().script.push_back(failure);
    }

    /// A post `author` made elsewhere (on LinkedIn itself, or before Herald), `created_at`
    /// milliseconds since the epoch.
    pub fn seed_post(
        &self,
        author: &str,
        commentary: &str,
        source: &str,
        created_at: i64,
    ) -> String {
        let mut g = self.inner.lock().unwrap();
        let urn = format!("urn:li:share:{}", 7_150_000_000_000_000_000u64 + g.counter);
        g.counter += 1;
        g.posts.push(json!({
            "id": urn, "author": author, "commentary": commentary, "visibility": "PUBLIC",
            "lifecycleState": "PUBLISHED", "createdAt": created_at, "publishedAt": created_at,
            "content": { "article": { "source": source, "title": "A title" } },
        }));
        urn
    }

    /// Herald's LinkedIn app pointed at this server.
    pub fn app(&self) -> PlatformApp {
        PlatformApp {
            client_id: self.client_id.clone(),
            client_secret: Some(self.client_secret.clone().into()),
            api_base: Some(self.base.clone()),
            token_url: Some(format!("{}/oauth/v2/accessToken", self.base)),
            authorize_url: Some(format!("{}/oauth/v2/authorization", self.base)),
            revoke_url: None,
        }
    }

    /// The member revokes the app in their LinkedIn settings: every token of theirs dies.
    pub fn revoke_member(&self) {
        for g in self.inner.lock().unwrap().grants.iter_mut() {
            g.revoked = true;
        }
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.recorder.all()
    }

    /// An uploaded image's content type and bytes, by URN.
    pub fn image(&self, urn: &str) -> Option<Uploaded> {
        self.inner
            .lock()
            .unwrap()
            .images
            .get(urn)
            .and_then(|(_, b)| b.clone())
    }

    pub fn posts(&self) -> Vec<Value> {
        self.inner.lock().unwrap().posts.clone()
    }

    /// Refresh grants answered with a new access token.
    pub fn refreshes(&self) -> usize {
        self.inner.lock().unwrap().refreshes
    }

    /// The newest access token of the newest live grant.
    pub fn current_access_token(&self) -> Option<String> {
        let g = self.inner.lock().unwrap();
        g.grants
            .iter()
            .rev()
            .find(|g| !g.revoked)
            .and_then(|g| g.access.last().cloned())
    }
}

/// `{"status","serviceErrorCode","code","message"}`, LinkedIn's REST error body.
fn li_error(status: StatusCode, service: i64, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "status": status.as_u16(), "serviceErrorCode": service, "code": code, "message": message })),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// LinkedIn's 401 for a bearer token that is not live; `None` when it is.
fn refusal(g: &Inner, seen: &Seen) -> Option<Response> {
    let token = seen.bearer().unwrap_or_default();
    match g
        .grants
        .iter()
        .find(|gr| gr.access.iter().any(|a| a == token))
    {
        Some(gr) if !gr.revoked => None,
        Some(_) => Some(li_error(
            StatusCode::UNAUTHORIZED,
            65_601,
            "REVOKED_ACCESS_TOKEN",
            "The token used in the request has been revoked by the user",
        )),
        None => Some(li_error(
            StatusCode::UNAUTHORIZED,
            65_600,
            "INVALID_ACCESS_TOKEN",
            "Invalid access token",
        )),
    }
}

async fn handle(
    State((inner, client_id, secret)): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen::new(method, &uri, headers, &body);
    let mut g = inner.lock().unwrap();
    match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", "/oauth/v2/authorization") => return authorization(&mut g, &seen, &client_id),
        ("POST", "/oauth/v2/accessToken") => {
            return access_token(&mut g, &seen, &client_id, &secret);
        }
        _ => {}
    }
    match g.script.pop_front() {
        Some(Failure::Throttled) => {
            return li_error(
                StatusCode::TOO_MANY_REQUESTS,
                101,
                "TOO_MANY_REQUESTS",
                "Resource level throttle APPLICATION DAY limit for calls to this resource is reached.",
            );
        }
        Some(Failure::GatewayTimeout) => {
            return li_error(
                StatusCode::GATEWAY_TIMEOUT,
                0,
                "GATEWAY_TIMEOUT",
                "Gateway timeout",
            );
        }
        None => {}
    }
    match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", "/v2/userinfo") => match refusal(&g, &seen) {
            None => Json(json!({
                "sub": MEMBER,
                "email_verified": true,
                "name": "Ada Lovelace",
                "locale": { "country": "GB", "language": "en" },
                "given_name": "Ada",
                "family_name": "Lovelace",
            }))
            .into_response(),
            Some(res) => res,
        },
        ("POST", "/rest/posts") => create_post(&mut g, &seen),
        ("POST", "/rest/images") if seen.q("action") == Some("initializeUpload") => {
            initialize_upload(&mut g, &seen)
        }
        ("PUT", path) if path.starts_with("/dms-uploads/") => upload_image(&mut g, &seen),
        ("GET", "/rest/posts") => list_posts(&g, &seen),
        _ => li_error(
            StatusCode::NOT_FOUND,
            0,
            "NOT_FOUND",
            "No virtual resource found",
        ),
    }
}

fn authorization(g: &mut Inner, seen: &Seen, client_id: &str) -> Response {
    let (Some(redirect), Some(state)) = (seen.param("redirect_uri"), seen.param("state")) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "redirect_uri and state are required",
        );
    };
    let scopes: Vec<&str> = seen.param("scope").unwrap_or_default().split(' ').collect();
    if seen.param("client_id") != Some(client_id)
        || seen.param("response_type") != Some("code")
        || !scopes.contains(&"w_member_social")
        || !scopes.contains(&"openid")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown client, response type or scope",
        );
    }
    let code = g.mint("code");
    g.codes.insert(code.clone(), redirect.to_owned());
    let mut to = url::Url::parse(redirect).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state);
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

fn access_token(g: &mut Inner, seen: &Seen, client_id: &str, secret: &str) -> Response {
    // LinkedIn takes the client credentials in the form only.
    if seen.form.get("client_id").map(String::as_str) != Some(client_id)
        || seen.form.get("client_secret").map(String::as_str) != Some(secret)
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    let now = chrono::Utc::now();
    match seen.form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = seen.form.get("code").cloned().unwrap_or_default();
            let redirect = g.codes.remove(&code);
            if redirect.is_none() || redirect.as_ref() != seen.form.get("redirect_uri") {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Unable to retrieve access token: appid/redirect uri/code verifier does not match authorization code. Or authorization code expired.",
                );
            }
            let access = g.mint("at");
            let refresh = g.partner.then(|| g.mint("rt"));
            g.grants.push(Grant {
                access: vec![access.clone()],
                refresh: refresh.clone(),
                refresh_expires_at: now + chrono::Duration::seconds(REFRESH_TTL),
                revoked: false,
            });
            // An OpenID grant also carries an `id_token`; Herald reads the member from userinfo.
            let mut body = json!({
                "access_token": access,
                "expires_in": ACCESS_TTL,
                "scope": SCOPE,
                "token_type": "Bearer",
            });
            if let Some(r) = refresh {
                body["refresh_token"] = r.into();
                body["refresh_token_expires_in"] = REFRESH_TTL.into();
            }
            Json(body).into_response()
        }
        Some("refresh_token") => {
            let presented = seen.form.get("refresh_token").cloned().unwrap_or_default();
            let access = g.mint("at");
            let Some(grant) = g
                .grants
                .iter_mut()
                .find(|gr| gr.refresh.as_deref() == Some(presented.as_str()))
                .filter(|gr| !gr.revoked && gr.refresh_expires_at > now)
            else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The provided authorization grant or refresh token is invalid, expired or revoked.",
                );
            };
            grant.access.push(access.clone());
            let left = (grant.refresh_expires_at - now).num_seconds();
            g.refreshes += 1;
            Json(json!({
                "access_token": access,
                "expires_in": ACCESS_TTL,
                "refresh_token": presented,
                "refresh_token_expires_in": left,
                "scope": SCOPE,
            }))
            .into_response()
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type is not supported",
        ),
    }
}

fn create_post(g: &mut Inner, seen: &Seen) -> Response {
    if let Some(res) = refusal(g, seen) {
        return res;
    }
    let version = seen.header("linkedin-version").unwrap_or_default();
    if version.is_empty() {
        return li_error(
            StatusCode::BAD_REQUEST,
            0,
            "VERSION_MISSING",
            "A version must be present. Please specify a version by adding the LinkedIn-Version header.",
        );
    }
    if version.len() != 6 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return li_error(
            StatusCode::UPGRADE_REQUIRED,
            0,
            "NONEXISTENT_VERSION",
            &format!("Requested version {version} is not active"),
        );
    }
    if seen.header("x-restli-protocol-version") != Some("2.0.0") {
        return li_error(
            StatusCode::BAD_REQUEST,
            0,
            "INVALID_PROTOCOL_VERSION",
            "The Rest.li protocol version 2.0.0 is required",
        );
    }
    let Some(body) = seen.json.clone() else {
        return li_error(
            StatusCode::BAD_REQUEST,
            0,
            "ILLEGAL_ARGUMENT",
            "The request body is not JSON",
        );
    };
    let author = body["author"].as_str().unwrap_or_default();
    if author != format!("urn:li:person:{MEMBER}")
        && author != format!("urn:li:organization:{ORGANIZATION}")
    {
        return li_error(
            StatusCode::FORBIDDEN,
            100,
            "ACCESS_DENIED",
            "Not enough permissions to access: partnerApiPostsExternal.CREATE.20260101",
        );
    }
    let content = &body["content"];
    let article_ok =
        content["article"]["source"].is_string() && content["article"]["title"].is_string();
    // One content per post: an article, one image (`media`), or 2 to 20 (`multiImage`), each
    // an image uploaded for this author.
    let images: Vec<&Value> = if content["media"].is_object() {
        vec![&content["media"]]
    } else {
        content["multiImage"]["images"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    };
    if !images.is_empty() {
        let multi = content["multiImage"].is_object();
        let uploaded = |i: &&Value| {
            i["id"]
                .as_str()
                .and_then(|id| g.images.get(id))
                .is_some_and(|(owner, bytes)| owner == author && bytes.is_some())
        };
        if (multi && !(2..=20).contains(&images.len())) || !images.iter().all(uploaded) {
            return li_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                0,
                "UNPROCESSABLE_ENTITY",
                "ERROR :: /content :: the images are not valid for this post",
            );
        }
    }
    let required_ok = body["commentary"].is_string()
        && body["visibility"] == "PUBLIC"
        && body["lifecycleState"] == "PUBLISHED"
        && body["distribution"]["feedDistribution"] == "MAIN_FEED"
        && (article_ok || !images.is_empty());
    if !required_ok {
        return li_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            0,
            "UNPROCESSABLE_ENTITY",
            "ERROR :: /content/article :: is missing required fields",
        );
    }
    if let Some(earlier) = g.posts.iter().find(|p| {
        p["author"] == body["author"]
            && p["commentary"] == body["commentary"]
            && p["content"] == body["content"]
    }) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "message": format!("Content is a duplicate of {}", earlier["id"].as_str().unwrap_or_default()),
                "status": 422,
            })),
        )
            .into_response();
    }
    let urn = format!("urn:li:share:{}", 7_150_000_000_000_000_000u64 + g.counter);
    g.counter += 1;
    let now = chrono::Utc::now().timestamp_millis();
    let mut post = body;
    post["id"] = urn.clone().into();
    post["createdAt"] = now.into();
    post["publishedAt"] = now.into();
    g.posts.push(post);
    (StatusCode::CREATED, [("x-restli-id", urn)]).into_response()
}

/// `GET /rest/posts?q=author&author=…&count=…`: the author's posts, newest first.
fn list_posts(g: &Inner, seen: &Seen) -> Response {
    if let Some(res) = refusal(g, seen) {
        return res;
    }
    if seen.header("linkedin-version").is_none_or(str::is_empty) {
        return li_error(
            StatusCode::BAD_REQUEST,
            0,
            "VERSION_MISSING",
            "A version must be present. Please specify a version by adding the LinkedIn-Version header.",
        );
    }
    if seen.q("q") != Some("author") {
        return li_error(
            StatusCode::BAD_REQUEST,
            0,
            "ILLEGAL_ARGUMENT",
            "q=author is required",
        );
    }
    let author = seen.q("author").unwrap_or_default();
    let count: usize = seen.q("count").and_then(|c| c.parse().ok()).unwrap_or(10);
    let mut elements: Vec<Value> = g
        .posts
        .iter()
        .filter(|p| p["author"] == author)
        .cloned()
        .collect();
    elements.sort_by_key(|p| std::cmp::Reverse(p["createdAt"].as_i64().unwrap_or_default()));
    elements.truncate(count);
    Json(json!({
        "paging": { "start": 0, "count": count, "links": [] },
        "elements": elements,
    }))
    .into_response()
}

/// `POST /rest/images?action=initializeUpload`: an image URN for `owner` and where to `PUT` it.
fn initialize_upload(g: &mut Inner, seen: &Seen) -> Response {
    if let Some(res) = refusal(g, seen) {
        return res;
    }
    let owner = seen
        .json
        .as_ref()
        .and_then(|b| b["initializeUploadRequest"]["owner"].as_str())
        .unwrap_or_default()
        .to_owned();
    if owner.is_empty() {
        return li_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            0,
            "UNPROCESSABLE_ENTITY",
            "ERROR :: /initializeUploadRequest/owner :: field is required but not found",
        );
    }
    g.counter += 1;
    let id = format!("D4E10AQ{}", g.counter);
    let host = seen.header("host").unwrap_or("127.0.0.1").to_owned();
    g.images.insert(format!("urn:li:image:{id}"), (owner, None));
    Json(json!({ "value": {
        "uploadUrlExpiresAt": chrono::Utc::now().timestamp_millis() + 86_400_000,
        "uploadUrl": format!("http://{host}/dms-uploads/{id}/uploadedImage/0"),
        "image": format!("urn:li:image:{id}"),
    }}))
    .into_response()
}

/// `PUT /dms-uploads/...`: the bytes of a registered image, with the member's token.
fn upload_image(g: &mut Inner, seen: &Seen) -> Response {
    if let Some(res) = refusal(g, seen) {
        return res;
    }
    let id = seen.path.split('/').nth(2).unwrap_or_default();
    let content_type = seen.header("content-type").unwrap_or_default().to_owned();
    match g.images.get_mut(&format!("urn:li:image:{id}")) {
        Some(entry) => {
            entry.1 = Some((content_type, seen.body.to_vec()));
            StatusCode::CREATED.into_response()
        }
        None => li_error(
            StatusCode::NOT_FOUND,
            0,
            "NOT_FOUND",
            "No upload registered here",
        ),
    }
}
