//! X's OAuth 2.0 endpoints: authorization (with PKCE S256), the token endpoint (code and
//! rotating refresh grants) and RFC 7009 revocation.

use std::sync::Mutex;

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::state::{Code, Grant, Inner, client_ok, oauth_error};
use crate::testing::recorder::Seen;

pub(super) fn authorize(inner: &Mutex<Inner>, seen: &Seen, client_id: &str) -> Response {
    let (Some(redirect), Some(state)) = (seen.q("redirect_uri"), seen.q("state")) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no redirect_uri or state",
        );
    };
    if seen.q("client_id") != Some(client_id) || seen.q("response_type") != Some("code") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "unknown client",
        );
    }
    let mut url = url::Url::parse(redirect).expect("a redirect URI");
    let mut g = inner.lock().unwrap();
    if std::mem::take(&mut g.deny_next) {
        url.query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("state", state);
    } else {
        if seen.q("code_challenge").is_some() && seen.q("code_challenge_method") != Some("S256") {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "S256 only");
        }
        let code = g.mint("code");
        let user = g.user.clone();
        g.codes.insert(
            code.clone(),
            Code {
                user,
                redirect_uri: redirect.to_owned(),
                challenge: seen.q("code_challenge").map(str::to_owned),
                used: false,
            },
        );
        url.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", state);
    }
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

pub(super) async fn token(
    inner: &Mutex<Inner>,
    seen: &Seen,
    client_id: &str,
    secret: &str,
) -> Response {
    if !client_ok(seen, client_id, secret) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Missing valid authorization header",
        );
    }
    let form = &seen.form;
    let dead = || {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Value passed for the token was invalid.",
        )
    };
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let mut g = inner.lock().unwrap();
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(c) = g.codes.get_mut(&code) else {
                return dead();
            };
            if c.used || Some(&c.redirect_uri) != form.get("redirect_uri") {
                return dead();
            }
            c.used = true;
            if let Some(challenge) = &c.challenge {
                let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != *challenge {
                    return dead();
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
            let rotate = g.rotate_refresh;
            let access = g.mint("at");
            let refresh = if rotate {
                g.mint("rt")
            } else {
                presented.clone()
            };
            let Some(grant) = g.grants.iter_mut().find(|gr| {
                gr.refresh.as_deref() == Some(presented.as_str()) || gr.spent.contains(&presented)
            }) else {
                return dead();
            };
            if grant.revoked {
                return dead();
            }
            if grant.spent.contains(&presented) {
                // Reuse of a rotated-out token: someone else holds the chain. End the grant.
                grant.revoked = true;
                return dead();
            }
            if rotate {
                grant.spent.push(presented);
                grant.refresh = Some(refresh.clone());
            }
            grant.access.push(access.clone());
            g.refreshes += 1;
            let mut body = json!({
                "token_type": "bearer",
                "access_token": access,
                "expires_in": 7200,
                "scope": "tweet.read tweet.write users.read offline.access",
            });
            if rotate {
                body["refresh_token"] = refresh.into();
            }
            Json(body).into_response()
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type is not supported",
        ),
    }
}

pub(super) fn revoke(inner: &Mutex<Inner>, seen: &Seen, client_id: &str, secret: &str) -> Response {
    if !client_ok(seen, client_id, secret) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Missing valid authorization header",
        );
    }
    let token = seen.form.get("token").cloned().unwrap_or_default();
    let mut g = inner.lock().unwrap();
    g.revocations.push(token.clone());
    for grant in g.grants.iter_mut() {
        if grant.refresh.as_deref() == Some(token.as_str()) || grant.access.contains(&token) {
            grant.revoked = true;
        }
    }
    // RFC 7009 §2.2: an unknown token is answered 200 too.
    Json(json!({ "revoked": true })).into_response()
}
