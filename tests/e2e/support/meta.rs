//! A local Meta Graph API in one of its three shapes (platforms.md §5–7), each a server of its own
//! as each is a host of its own:
//!
//! - **Facebook Pages** (`graph.facebook.com/v24.0`): the login dialog, the code exchange for a
//!   short-lived user token, `grant_type=fb_exchange_token` for a 60-day one, `GET /me/accounts`
//!   with the page tokens (which do not expire when read with a long-lived user token, and last
//!   an hour otherwise), `GET /{page}`, and `POST /{page}/feed`, which takes a page token only.
//!   There is no refresh.
//! - **Instagram** with Instagram Login (`api.instagram.com` for the code, `graph.instagram.com`
//!   for the rest): `ig_exchange_token`, `ig_refresh_token`, `GET /{ig-user}`, the publishing
//!   limit, `POST /{ig-user}/media` (a container), `GET /{container}?fields=status_code`,
//!   `POST /{ig-user}/media_publish`, `GET /{media}?fields=permalink`.
//! - **Threads** (`graph.threads.net/v1.0`): `th_exchange_token`, `th_refresh_token`, `GET /me`,
//!   the publishing limit, `POST /{user}/threads`, `GET /{container}?fields=status`,
//!   `POST /{user}/threads_publish`, `GET /{media}?fields=permalink`.
//!
//! Access tokens go in the `access_token` parameter (query or form). Errors use the Graph envelope
//! `{"error":{"message","type","code","error_subcode","fbtrace_id"}}` with HTTP 400, as Graph
//! answers an `OAuthException`; once the user takes the app's access away every token of theirs
//! answers code 190 with the subcode that platform's case documents.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::seen::Seen;

/// Meta's long-lived tokens: about 60 days.
pub const LONG_LIVED_SECS: i64 = 5_183_944;
/// A short-lived Facebook user token (hours); Instagram's and Threads' last one hour.
const SHORT_LIVED_SECS: i64 = 5_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaApi {
    Facebook,
    Instagram,
    Threads,
}

impl MetaApi {
    fn version(self) -> &'static str {
        match self {
            Self::Facebook => herald_platforms::facebook::API_VERSION,
            Self::Instagram => herald_platforms::instagram::API_VERSION,
            Self::Threads => herald_platforms::threads::API_VERSION,
        }
    }

    fn authorize_path(self) -> String {
        match self {
            Self::Facebook => format!("/{}/dialog/oauth", self.version()),
            Self::Instagram | Self::Threads => "/oauth/authorize".into(),
        }
    }

    /// Where the code is exchanged (on Facebook, also the long-lived exchange).
    fn code_path(self) -> String {
        match self {
            Self::Facebook => format!("/{}/oauth/access_token", self.version()),
            Self::Instagram | Self::Threads => "/oauth/access_token".into(),
        }
    }

    /// The permission a post needs, which the login must ask for.
    fn publish_scope(self) -> &'static str {
        match self {
            Self::Facebook => "pages_manage_posts",
            Self::Instagram => "instagram_business_content_publish",
            Self::Threads => "threads_content_publish",
        }
    }

    fn exchange_grant(self) -> &'static str {
        match self {
            Self::Facebook => "fb_exchange_token",
            Self::Instagram => "ig_exchange_token",
            Self::Threads => "th_exchange_token",
        }
    }

    fn refresh_grant(self) -> Option<&'static str> {
        match self {
            Self::Facebook => None,
            Self::Instagram => Some("ig_refresh_token"),
            Self::Threads => Some("th_refresh_token"),
        }
    }

    /// The user (Facebook), IG professional account or Threads user who signs in.
    pub fn user_id(self) -> &'static str {
        match self {
            Self::Facebook => "10224857",
            Self::Instagram => "17841405793187218",
            Self::Threads => "7001234567",
        }
    }

    /// What Meta answers once the user took the app's access away.
    fn revoked_error(self, app: &str) -> Response {
        let (message, subcode) = match self {
            Self::Facebook => (
                "Error validating access token: The session has been invalidated because the user changed their password or Facebook has changed the session for security reasons.".to_owned(),
                Some(460),
            ),
            Self::Instagram => (
                format!("Error validating access token: The user has not authorized application {app}."),
                Some(458),
            ),
            Self::Threads => (
                format!("Error validating access token: The user has not authorized application {app}."),
                None,
            ),
        };
        graph_error(190, subcode, &message)
    }
}

/// The Facebook page the user manages.
pub const PAGE_ID: &str = "101123456789";
pub const PAGE_NAME: &str = "Herald Café";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    ShortUser,
    LongUser,
    Page,
}

struct Token {
    kind: TokenKind,
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
}

struct Container {
    text: String,
    link: Option<String>,
    image_url: Option<String>,
    published: bool,
}

#[derive(Default)]
struct Inner {
    codes: HashMap<String, String>,
    tokens: HashMap<String, Token>,
    containers: HashMap<String, Container>,
    /// Published posts: `{id, text, link, image_url}`.
    posts: Vec<Value>,
    refreshes: usize,
    seen: Vec<Seen>,
    counter: u64,
}

impl Inner {
    fn mint_id(&mut self) -> String {
        self.counter += 1;
        (17_900_000_000_000_000u64 + self.counter).to_string()
    }

    fn mint_token(&mut self, kind: TokenKind, ttl: Option<i64>) -> String {
        self.counter += 1;
        let prefix = match kind {
            TokenKind::ShortUser => "short",
            TokenKind::LongUser => "long",
            TokenKind::Page => "page",
        };
        let token = format!(
            "EAA{prefix}{}{}",
            self.counter,
            uuid::Uuid::new_v4().simple()
        );
        self.tokens.insert(
            token.clone(),
            Token {
                kind,
                expires_at: ttl.map(|s| Utc::now() + chrono::Duration::seconds(s)),
                revoked: false,
            },
        );
        token
    }
}

#[derive(Clone)]
pub struct FakeMeta {
    pub api: MetaApi,
    pub base: String,
    pub client_id: String,
    client_secret: String,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Clone)]
struct AppState {
    api: MetaApi,
    client_id: String,
    client_secret: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeMeta {
    pub async fn start(api: MetaApi) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let client_id = format!("{}", 900_000_000_000_000u64 + rand_u32() as u64);
        let client_secret = format!("meta-secret-{}", uuid::Uuid::new_v4().simple());
        let state = AppState {
            api,
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            inner: inner.clone(),
        };
        let app = Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            api,
            base,
            client_id,
            client_secret,
            inner,
        }
    }

    /// Herald's app for this platform, pointed at this server.
    pub fn app(&self) -> herald_platforms::config::PlatformApp {
        herald_platforms::config::PlatformApp {
            client_id: self.client_id.clone(),
            client_secret: Some(self.client_secret.clone().into()),
            api_base: Some(self.base.clone()),
            token_url: Some(format!("{}{}", self.base, self.api.code_path())),
            authorize_url: Some(format!("{}{}", self.base, self.api.authorize_path())),
            revoke_url: None,
        }
    }

    /// The user takes the app's access away (or changes their password): every token dies.
    pub fn revoke_user(&self) {
        for t in self.inner.lock().unwrap().tokens.values_mut() {
            t.revoked = true;
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    pub fn posts(&self) -> Vec<Value> {
        self.inner.lock().unwrap().posts.clone()
    }

    /// Refreshes answered with a new long-lived token.
    pub fn refreshes(&self) -> usize {
        self.inner.lock().unwrap().refreshes
    }

    /// What kind of token this is, and whether it still works.
    pub fn token(&self, token: &str) -> Option<(TokenKind, Option<DateTime<Utc>>, bool)> {
        let g = self.inner.lock().unwrap();
        g.tokens
            .get(token)
            .map(|t| (t.kind, t.expires_at, !t.revoked))
    }
}

fn rand_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

fn graph_error(code: i64, subcode: Option<i64>, message: &str) -> Response {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AbCdEfGhIjK",
    });
    if let Some(s) = subcode {
        error["error_subcode"] = s.into();
    }
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}

fn unknown_token() -> Response {
    graph_error(
        190,
        None,
        "Invalid OAuth access token - Cannot parse access token",
    )
}

async fn handle(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen::new(method, &uri, headers, &body);
    let mut g = s.inner.lock().unwrap();
    g.seen.push(seen.clone());
    let api = s.api;
    let path = seen.path.clone();
    let method = seen.method.as_str();
    if method == "GET" && path == api.authorize_path() {
        return authorize(&mut g, &s, &seen);
    }
    if path == api.code_path()
        && seen.param("grant_type") != Some(api.exchange_grant())
        && (method == "POST" || api == MetaApi::Facebook)
    {
        return exchange_code(&mut g, &s, &seen);
    }
    let long_lived_path = match api {
        MetaApi::Facebook => api.code_path(),
        MetaApi::Instagram | MetaApi::Threads => "/access_token".into(),
    };
    if method == "GET" && path == long_lived_path {
        return exchange_long_lived(&mut g, &s, &seen);
    }
    if method == "GET" && path == "/refresh_access_token" && api.refresh_grant().is_some() {
        return refresh(&mut g, &s, &seen);
    }
    let Some(node_path) = path.strip_prefix(&format!("/{}/", api.version())) else {
        return graph_error(2500, None, &format!("Unknown path components: {path}"));
    };
    // Every Graph call needs a live token.
    let token = seen.param("access_token").unwrap_or_default().to_owned();
    let kind = match g.tokens.get(&token) {
        None => return unknown_token(),
        Some(t) if t.revoked => return api.revoked_error(&s.client_id),
        Some(t) if t.expires_at.is_some_and(|e| e <= Utc::now()) => {
            return graph_error(
                190,
                Some(463),
                "Error validating access token: Session has expired.",
            );
        }
        Some(t) => t.kind,
    };
    let parts: Vec<&str> = node_path.split('/').collect();
    match (api, method, parts.as_slice()) {
        (MetaApi::Facebook, "GET", ["me", "accounts"]) => {
            if kind == TokenKind::Page {
                return graph_error(
                    100,
                    None,
                    "(#100) Tried accessing nonexisting field (accounts) on node type (Page)",
                );
            }
            // A page token read with a long-lived user token does not expire.
            let ttl = (kind == TokenKind::ShortUser).then_some(3600);
            let page_token = g.mint_token(TokenKind::Page, ttl);
            Json(json!({
                "data": [{
                    "access_token": page_token,
                    "category": "Cafe",
                    "category_list": [{ "id": "128673187201735", "name": "Cafe" }],
                    "name": PAGE_NAME,
                    "id": PAGE_ID,
                    "tasks": ["ANALYZE", "ADVERTISE", "MESSAGING", "MODERATE", "CREATE_CONTENT", "MANAGE"],
                }],
                "paging": { "cursors": { "before": "QVFIUmx", "after": "QVFIUmx" } },
            }))
            .into_response()
        }
        (MetaApi::Facebook, "GET", [page]) if *page == PAGE_ID => {
            Json(json!({ "id": PAGE_ID, "name": PAGE_NAME })).into_response()
        }
        (MetaApi::Facebook, "POST", [page, "feed"]) if *page == PAGE_ID => {
            if kind != TokenKind::Page {
                return graph_error(
                    200,
                    None,
                    "(#200) If posting to a page, requires both pages_read_engagement and pages_manage_posts as an admin with sufficient administrative permission",
                );
            }
            let (message, link) = (seen.param("message"), seen.param("link"));
            if message.is_none() && link.is_none() {
                return graph_error(100, None, "(#100) Missing message or attachment");
            }
            let id = format!("{PAGE_ID}_{}", g.mint_id());
            g.posts
                .push(json!({ "id": id, "text": message, "link": link }));
            // The Pages API answers the new post's id only.
            Json(json!({ "id": id })).into_response()
        }
        (MetaApi::Instagram, "GET", [user]) if *user == api.user_id() || *user == "me" => {
            Json(json!({ "id": api.user_id(), "username": "herald.cafe", "followers_count": 1284 }))
                .into_response()
        }
        (MetaApi::Threads, "GET", ["me"]) => {
            Json(json!({ "id": api.user_id(), "username": "herald" })).into_response()
        }
        (MetaApi::Instagram, "GET", [user, "content_publishing_limit"])
        | (MetaApi::Threads, "GET", [user, "threads_publishing_limit"])
            if *user == api.user_id() =>
        {
            let used = g.posts.len();
            let total = if api == MetaApi::Instagram { 100 } else { 250 };
            Json(json!({ "data": [{ "quota_usage": used, "config": { "quota_total": total, "quota_duration": 86400 } }] }))
                .into_response()
        }
        (MetaApi::Instagram, "POST", [user, "media"]) if *user == api.user_id() => {
            let Some(image_url) = seen
                .param("image_url")
                .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            else {
                return graph_error(
                    100,
                    Some(2_207_052),
                    "The media could not be fetched from this uri",
                );
            };
            let container = Container {
                text: seen.param("caption").unwrap_or_default().to_owned(),
                link: None,
                image_url: Some(image_url.to_owned()),
                published: false,
            };
            let id = g.mint_id();
            g.containers.insert(id.clone(), container);
            Json(json!({ "id": id })).into_response()
        }
        (MetaApi::Threads, "POST", [user, "threads"]) if *user == api.user_id() => {
            let text = seen.param("text").unwrap_or_default();
            if seen.param("media_type") != Some("TEXT") || text.is_empty() {
                return graph_error(100, None, "(#100) The parameter text is required");
            }
            let container = Container {
                text: text.to_owned(),
                link: seen.param("link_attachment").map(str::to_owned),
                image_url: None,
                published: false,
            };
            let id = g.mint_id();
            g.containers.insert(id.clone(), container);
            Json(json!({ "id": id })).into_response()
        }
        (MetaApi::Instagram, "POST", [user, "media_publish"])
        | (MetaApi::Threads, "POST", [user, "threads_publish"])
            if *user == api.user_id() =>
        {
            let creation = seen.param("creation_id").unwrap_or_default().to_owned();
            let media = g.mint_id();
            let Some(c) = g.containers.get_mut(&creation) else {
                return graph_error(
                    100,
                    Some(2_207_027),
                    "The media is not ready to be published",
                );
            };
            if c.published {
                return graph_error(
                    9_007,
                    Some(2_207_006),
                    "The media has already been published",
                );
            }
            c.published = true;
            let post = json!({ "id": media, "container": creation, "text": c.text, "link": c.link, "image_url": c.image_url });
            g.posts.push(post);
            Json(json!({ "id": media })).into_response()
        }
        (MetaApi::Instagram | MetaApi::Threads, "GET", [node]) => {
            let fields = seen.param("fields").unwrap_or_default();
            if let Some(c) = g.containers.get(*node) {
                let status = if c.published { "PUBLISHED" } else { "FINISHED" };
                return if api == MetaApi::Instagram {
                    Json(json!({ "id": node, "status_code": status })).into_response()
                } else {
                    Json(json!({ "id": node, "status": status })).into_response()
                };
            }
            if fields.contains("permalink") && g.posts.iter().any(|p| p["id"] == *node) {
                let permalink = match api {
                    MetaApi::Instagram => format!("https://www.instagram.com/p/C{node}/"),
                    _ => format!("https://www.threads.net/@herald/post/C{node}"),
                };
                return Json(json!({ "id": node, "permalink": permalink })).into_response();
            }
            graph_error(
                100,
                Some(33),
                &format!("Unsupported get request. Object with ID '{node}' does not exist"),
            )
        }
        _ => graph_error(
            100,
            Some(33),
            &format!("Unsupported {method} request. Object with ID '{node_path}' does not exist"),
        ),
    }
}

fn authorize(g: &mut Inner, s: &AppState, seen: &Seen) -> Response {
    let (Some(redirect), Some(state)) = (seen.param("redirect_uri"), seen.param("state")) else {
        return graph_error(100, None, "redirect_uri and state are required");
    };
    let scopes: Vec<&str> = seen
        .param("scope")
        .unwrap_or_default()
        .split([',', ' '])
        .collect();
    if seen.param("client_id") != Some(s.client_id.as_str())
        || seen.param("response_type") != Some("code")
        || !scopes.contains(&s.api.publish_scope())
    {
        return graph_error(100, None, "Invalid client_id, response_type or scope");
    }
    g.counter += 1;
    let code = format!("AQ{}{}", g.counter, uuid::Uuid::new_v4().simple());
    g.codes.insert(code.clone(), redirect.to_owned());
    let mut to = url::Url::parse(redirect).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state);
    if s.api == MetaApi::Instagram {
        // Instagram appends `#_` to the redirect; a browser never sends the fragment on.
        to.set_fragment(Some("_"));
    }
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

fn client_ok(s: &AppState, seen: &Seen) -> bool {
    seen.param("client_id") == Some(s.client_id.as_str())
        && seen.param("client_secret") == Some(s.client_secret.as_str())
}

fn exchange_code(g: &mut Inner, s: &AppState, seen: &Seen) -> Response {
    if !client_ok(s, seen) {
        return graph_error(
            101,
            None,
            "Error validating application. Invalid application ID.",
        );
    }
    let code = seen.param("code").unwrap_or_default();
    let Some(redirect) = g.codes.remove(code) else {
        return graph_error(100, Some(36_009), "This authorization code has been used.");
    };
    if seen.param("redirect_uri") != Some(redirect.as_str()) {
        return graph_error(
            100,
            Some(36_008),
            "Error validating verification code. Please make sure your redirect_uri is identical to the one you used in the OAuth dialog request",
        );
    }
    if s.api != MetaApi::Facebook && seen.param("grant_type") != Some("authorization_code") {
        return graph_error(100, None, "Invalid grant_type");
    }
    let ttl = if s.api == MetaApi::Facebook {
        SHORT_LIVED_SECS
    } else {
        3600
    };
    let token = g.mint_token(TokenKind::ShortUser, Some(ttl));
    match s.api {
        MetaApi::Facebook => {
            Json(json!({ "access_token": token, "token_type": "bearer", "expires_in": ttl }))
                .into_response()
        }
        // Instagram and Threads add the user id, a JSON number.
        MetaApi::Instagram | MetaApi::Threads => Json(json!({
            "access_token": token,
            "user_id": s.api.user_id().parse::<u64>().unwrap(),
        }))
        .into_response(),
    }
}

fn exchange_long_lived(g: &mut Inner, s: &AppState, seen: &Seen) -> Response {
    if seen.param("grant_type") != Some(s.api.exchange_grant()) {
        return graph_error(100, None, "Invalid grant_type");
    }
    // Facebook names the client in full; Instagram and Threads take the secret only.
    let client_ok = match s.api {
        MetaApi::Facebook => client_ok(s, seen),
        _ => seen.param("client_secret") == Some(s.client_secret.as_str()),
    };
    if !client_ok {
        return graph_error(101, None, "Error validating client secret.");
    }
    let short = match s.api {
        MetaApi::Facebook => seen.param("fb_exchange_token"),
        _ => seen.param("access_token"),
    }
    .unwrap_or_default();
    match g.tokens.get(short) {
        Some(t) if t.revoked => return s.api.revoked_error(&s.client_id),
        // An expired token cannot be exchanged: the user logs in again.
        Some(t)
            if t.kind == TokenKind::ShortUser && t.expires_at.is_some_and(|e| e > Utc::now()) => {}
        _ => return unknown_token(),
    }
    let long = g.mint_token(TokenKind::LongUser, Some(LONG_LIVED_SECS));
    Json(json!({ "access_token": long, "token_type": "bearer", "expires_in": LONG_LIVED_SECS }))
        .into_response()
}

fn refresh(g: &mut Inner, s: &AppState, seen: &Seen) -> Response {
    if seen.param("grant_type") != s.api.refresh_grant() {
        return graph_error(100, None, "Invalid grant_type");
    }
    let presented = seen.param("access_token").unwrap_or_default();
    match g.tokens.get(presented) {
        Some(t) if t.revoked => return s.api.revoked_error(&s.client_id),
        // Only an unexpired long-lived token can be refreshed.
        Some(t)
            if t.kind == TokenKind::LongUser && t.expires_at.is_some_and(|e| e > Utc::now()) => {}
        Some(_) => {
            return graph_error(
                190,
                Some(463),
                "Error validating access token: Session has expired.",
            );
        }
        None => return unknown_token(),
    }
    let fresh = g.mint_token(TokenKind::LongUser, Some(LONG_LIVED_SECS));
    g.refreshes += 1;
    Json(json!({ "access_token": fresh, "token_type": "bearer", "expires_in": LONG_LIVED_SECS }))
        .into_response()
}
