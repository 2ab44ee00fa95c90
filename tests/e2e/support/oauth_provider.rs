//! A generic OAuth 2.0 provider, shaped like X's: an authorize endpoint that redirects back with a
//! code, a token endpoint that checks the client, the redirect URI and the PKCE verifier (S256)
//! and issues rotating refresh tokens (a rotated-out refresh token presented again revokes the
//! whole grant, as RFC 9700 §4.14.2 recommends; every token of it answers `invalid_grant` after),
//! a revocation endpoint (RFC 7009), and the two X API calls the client makes with the tokens:
//! `GET /2/users/me` (verify) and `POST /2/tweets` (share).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Code {
    user: String,
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    used: bool,
}

struct Grant {
    user: String,
    access: Vec<String>,
    refresh: Option<String>,
    /// Refresh tokens this grant rotated out: seeing one again means it leaked.
    spent: Vec<String>,
    revoked: bool,
}

#[derive(Default)]
struct Inner {
    codes: HashMap<String, Code>,
    grants: Vec<Grant>,
    /// The account the next authorization is for.
    user: String,
    issue_refresh: bool,
    deny_next: bool,
    refresh_delay: Duration,
    refreshes: usize,
    refresh_requests: usize,
    revocations: Vec<String>,
    tweets: Vec<Value>,
    counter: u64,
}

impl Inner {
    fn mint(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{kind}-{}-{}", self.counter, uuid::Uuid::new_v4().simple())
    }

    fn live_grant_of_access(&self, token: &str) -> Option<&Grant> {
        self.grants
            .iter()
            .find(|g| !g.revoked && g.access.iter().any(|a| a == token))
    }
}

#[derive(Clone)]
pub struct OAuthProvider {
    pub base: String,
    pub client_id: String,
    pub client_secret: String,
    inner: Arc<Mutex<Inner>>,
}

type AppState = (Arc<Mutex<Inner>>, String, String);

impl OAuthProvider {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            user: "2244994945".into(),
            issue_refresh: true,
            ..Inner::default()
        }));
        let client_id = format!("client-{}", uuid::Uuid::new_v4().simple());
        let client_secret = format!("secret-{}", uuid::Uuid::new_v4().simple());
        let state: AppState = (inner.clone(), client_id.clone(), client_secret.clone());
        let app = Router::new()
            .route("/oauth/authorize", get(authorize))
            .route("/oauth/token", post(token))
            .route("/oauth/revoke", post(revoke))
            .route("/2/users/me", get(me))
            .route("/2/tweets", post(tweet))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base,
            client_id,
            client_secret,
            inner,
        }
    }

    /// Herald's X app pointed at this provider.
    pub fn x_app(&self) -> herald_platforms::config::PlatformApp {
        herald_platforms::config::PlatformApp {
            client_id: self.client_id.clone(),
            client_secret: Some(self.client_secret.clone().into()),
            api_base: Some(self.base.clone()),
            token_url: Some(format!("{}/oauth/token", self.base)),
            authorize_url: Some(format!("{}/oauth/authorize", self.base)),
            revoke_url: Some(format!("{}/oauth/revoke", self.base)),
        }
    }

    /// Whether the code exchange issues a refresh token (refreshes always rotate it).
    pub fn issue_refresh_tokens(&self, yes: bool) {
        self.inner.lock().unwrap().issue_refresh = yes;
    }

    /// The next authorization is refused by the user (`error=access_denied`).
    pub fn deny_next(&self) {
        self.inner.lock().unwrap().deny_next = true;
    }

    /// How long a refresh takes to answer: a slow token endpoint widens a race.
    pub fn slow_refreshes(&self, by: Duration) {
        self.inner.lock().unwrap().refresh_delay = by;
    }

    /// The user revokes the app (every grant of theirs dies).
    pub fn revoke_user(&self, user: &str) {
        for g in self.inner.lock().unwrap().grants.iter_mut() {
            if g.user == user {
                g.revoked = true;
            }
        }
    }

    /// Refresh grants answered with new tokens.
    pub fn refreshes(&self) -> usize {
        self.inner.lock().unwrap().refreshes
    }

    /// Refresh requests received, answered or not.
    pub fn refresh_requests(&self) -> usize {
        self.inner.lock().unwrap().refresh_requests
    }

    /// The live refresh token of the user's newest grant.
    pub fn current_refresh_token(&self, user: &str) -> Option<String> {
        let g = self.inner.lock().unwrap();
        g.grants
            .iter()
            .rev()
            .find(|g| g.user == user && !g.revoked)
            .and_then(|g| g.refresh.clone())
    }

    /// Whether every grant of the user is revoked.
    pub fn all_revoked(&self, user: &str) -> bool {
        let g = self.inner.lock().unwrap();
        g.grants
            .iter()
            .filter(|g| g.user == user)
            .all(|g| g.revoked)
    }

    /// Tokens presented to the revocation endpoint.
    pub fn revocations(&self) -> Vec<String> {
        self.inner.lock().unwrap().revocations.clone()
    }

    pub fn tweets(&self) -> Vec<Value> {
        self.inner.lock().unwrap().tweets.clone()
    }
}

/// An `application/x-www-form-urlencoded` body (axum's `Form` needs a feature Herald leaves off).
pub fn parse_form(body: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": format!("{error} (test provider)") })),
    )
        .into_response()
}

/// `client_id` from HTTP Basic (a confidential client) or the form (a public one).
fn client_ok(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    client_id: &str,
    secret: &str,
) -> bool {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = STANDARD
            .decode(basic)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        return decoded.as_deref() == Some(&format!("{client_id}:{secret}"));
    }
    form.get("client_id").map(String::as_str) == Some(client_id)
        && form
            .get("client_secret")
            .is_none_or(|s| s.as_str() == secret)
}

async fn authorize(
    State((inner, client_id, _)): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(redirect), Some(state)) = (q.get("redirect_uri"), q.get("state")) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    if q.get("client_id") != Some(&client_id)
        || q.get("response_type").map(String::as_str) != Some("code")
    {
        return oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client");
    }
    let mut url = url::Url::parse(redirect).unwrap();
    let mut g = inner.lock().unwrap();
    if std::mem::take(&mut g.deny_next) {
        url.query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("state", state);
    } else {
        if q.contains_key("code_challenge")
            && q.get("code_challenge_method").map(String::as_str) != Some("S256")
        {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
        }
        let code = g.mint("code");
        let user = g.user.clone();
        g.codes.insert(
            code.clone(),
            Code {
                user,
                client_id: client_id.clone(),
                redirect_uri: redirect.clone(),
                challenge: q.get("code_challenge").cloned(),
                used: false,
            },
        );
        url.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", state);
    }
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

async fn token(
    State((inner, client_id, secret)): State<AppState>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form = parse_form(&body);
    if !client_ok(&headers, &form, &client_id, &secret) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let mut g = inner.lock().unwrap();
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(c) = g.codes.get_mut(&code) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            if c.used
                || c.client_id != client_id
                || Some(&c.redirect_uri) != form.get("redirect_uri")
            {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            c.used = true;
            if let Some(challenge) = &c.challenge {
                let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != *challenge {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                }
            }
            let user = c.user.clone();
            let access = g.mint("at");
            let refresh = g.issue_refresh.then(|| g.mint("rt"));
            g.grants.push(Grant {
                user,
                access: vec![access.clone()],
                refresh: refresh.clone(),
                spent: vec![],
                revoked: false,
            });
            let mut body = json!({
                "token_type": "bearer",
                "access_token": access,
                "expires_in": 7200,
                "scope": "tweet.read tweet.write users.read offline.access",
            });
            if let Some(r) = refresh {
                body["refresh_token"] = r.into();
            }
            Json(body).into_response()
        }
        Some("refresh_token") => {
            let delay = {
                let mut g = inner.lock().unwrap();
                g.refresh_requests += 1;
                g.refresh_delay
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let mut g = inner.lock().unwrap();
            let access = g.mint("at");
            let refresh = g.mint("rt");
            let Some(grant) = g.grants.iter_mut().find(|gr| {
                gr.refresh.as_deref() == Some(presented.as_str()) || gr.spent.contains(&presented)
            }) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            if grant.revoked {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            if grant.spent.contains(&presented) {
                // Reuse of a rotated-out token: someone else holds the chain. End the grant.
                grant.revoked = true;
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            grant.spent.push(presented);
            grant.refresh = Some(refresh.clone());
            grant.access.push(access.clone());
            g.refreshes += 1;
            Json(json!({
                "token_type": "bearer",
                "access_token": access,
                "refresh_token": refresh,
                "expires_in": 7200,
                "scope": "tweet.read tweet.write users.read offline.access",
            }))
            .into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

async fn revoke(
    State((inner, client_id, secret)): State<AppState>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form = parse_form(&body);
    if !client_ok(&headers, &form, &client_id, &secret) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let mut g = inner.lock().unwrap();
    g.revocations.push(token.clone());
    for grant in g.grants.iter_mut() {
        if grant.refresh.as_deref() == Some(token.as_str()) || grant.access.contains(&token) {
            grant.revoked = true;
        }
    }
    // RFC 7009 §2.2: an unknown token is answered 200 too.
    Json(json!({})).into_response()
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized" })),
    )
        .into_response()
}

async fn me(State((inner, _, _)): State<AppState>, headers: HeaderMap) -> Response {
    let g = inner.lock().unwrap();
    match g.live_grant_of_access(&bearer(&headers)) {
        Some(grant) => Json(json!({ "data": {
            "id": grant.user,
            "username": format!("user{}", grant.user),
            "public_metrics": { "followers_count": 7 },
        }}))
        .into_response(),
        None => unauthorized(),
    }
}

async fn tweet(
    State((inner, _, _)): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut g = inner.lock().unwrap();
    if g.live_grant_of_access(&bearer(&headers)).is_none() {
        return unauthorized();
    }
    let id = (1_800_000_000_000_000_000u64 + g.tweets.len() as u64).to_string();
    g.tweets.push(json!({ "id": id, "text": body["text"] }));
    (
        StatusCode::CREATED,
        Json(json!({ "data": { "id": id, "text": body["text"], "edit_history_tweet_ids": [id] } })),
    )
        .into_response()
}
